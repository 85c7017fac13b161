"""Configuration: typed settings from the environment (every env var, read once: ``settings``)
and the series catalogue (``catalogue``, shipped ones in ``catalogues/*.yaml``)."""

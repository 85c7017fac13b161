"""Pure domain code: the hierarchy of levels (and, as the layout settles, windows,
conditions, formulas, detectors). No Dagster, no I/O: everything here is a value or a
function of values."""

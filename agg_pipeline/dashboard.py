"""Import shim: the module lives in ``agg_pipeline.serving.dashboard`` (kept so that
``from agg_pipeline import dashboard`` and ``import agg_pipeline.dashboard`` keep working)."""

import sys

from agg_pipeline.serving import dashboard as _moved

# The very module object, not a copy: attributes, private helpers and monkeypatches are
# the same whichever name a caller used.
sys.modules[__name__] = _moved

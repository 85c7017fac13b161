"""Import shim: the module lives in ``agg_pipeline.serving.patterns`` (kept so that
``from agg_pipeline import patterns`` and ``import agg_pipeline.patterns`` keep working)."""

import sys

from agg_pipeline.serving import patterns as _moved

# The very module object, not a copy: attributes, private helpers and monkeypatches are
# the same whichever name a caller used.
sys.modules[__name__] = _moved

"""Pure computation: window maths, SQL text, conditions, patterns. No Dagster, no I/O."""

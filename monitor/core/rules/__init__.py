"""Rules: the model, loading and validation, expressions, terms, matching, explanations."""

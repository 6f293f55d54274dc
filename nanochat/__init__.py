"""A compact GPT trainer with Mixture-of-Experts and FP8."""

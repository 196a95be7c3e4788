"""Guards: a linear probe on the model's own hidden states at the prompt, fitted from a constitution.

After Anthropic's Constitutional Classifiers (Sharma et al. 2025, arXiv 2501.18837) and their follow-up
(arXiv 2601.04603), which reads linear probes off the policy model's own activations: the constitution that
shapes the model's answers also names, by its principles' `categories`, which training prompts each principle
should stop. `cai guard train` fits the probes (`probe_train.py`, features from `features.py`), `Guard`
(`probe.py`) loads and applies them, `guarded.py` puts a guard in front of a model in `cai eval` and `cai try`.
"""

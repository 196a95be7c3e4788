"""`is_refusal`: does an answer refuse anything? The yes/no question the training-data filters ask.

`cai generate` drops a revision that refuses where its principle asks the model to keep helping, and
checks that a contrast pair's refusing side refuses (`cai_kit/generation/filters.py`). Both read the
whole answer through the eval's verdict rules (`cai_kit/evaluation/verdicts.py`), so training data and
reports mean the same thing by "refuses": a full or a partial refusal. A partial refusal ("I can't help
with camping, but here are some tips") counts, because it is exactly the opening a helping principle must
not teach. The rules are read without the prompt, so a refusal's topic is not compared with the request.
"""

from __future__ import annotations

from cai_kit.evaluation.verdicts import verdict


def is_refusal(text: str) -> bool:
    """True when the answer fully or partly refuses (any verdict but full_compliance)."""
    return verdict("", text)[0] != "full_compliance"

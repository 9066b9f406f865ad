""":class:`shoal.patterns.Verdict`, in a module of its own: loaded on first use.

Defining a pydantic model (even one whose validator is built later) loads ``pydantic.fields``
and the annotated types it brings: about a tenth of what ``import shoal`` and every public
name cost. Only a reflect loop needs a verdict, so :mod:`shoal.patterns` loads this module
when ``Verdict`` is first asked for. The class keeps ``shoal.patterns`` as its module: its
name, repr and pickles are as they were.
"""

# (no ``from __future__ import annotations``: the fields' types are the classes themselves,
# which pydantic needs no module namespace to resolve)

import pydantic

__all__ = ["Verdict"]


class Verdict(pydantic.BaseModel):
    """A critic's judgement of a draft: give a critic agent ``output_type=Verdict``.

    ``accept``: whether the draft is good enough; ``feedback``: what to change (sent to the
    worker with its draft for the next round) or, on acceptance, any remark.
    """

    # validator built on first use, not at import: ``import shoal`` builds no pydantic validator
    model_config = pydantic.ConfigDict(defer_build=True)
    __module__ = "shoal.patterns"

    accept: bool
    feedback: str = ""

"""A student family in a package of its own: transformer students whose feed-forward block is
`ratio` times their hidden width (the teacher's is usually 4x), layers started at random.

Installed, it is a cascade-kd plugin (pyproject.toml declares this module under the entry-point
group `cascade_kd.plugins`): cascade-kd imports it the first time a recipe names `ffn_ratio`, and
the recipe's `student.options` are checked against `FfnRatioOptions` at their line.
"""

from pydantic import BaseModel, Field

import cascade_kd
from cascade_kd.students.transformer import TransformerFamily


class FfnRatioOptions(BaseModel):
    """The keys this family adds under `student.options`."""

    ratio: float = Field(2.0, gt=0)  # feed-forward width / hidden width


class FfnRatioFamily(TransformerFamily):
    kind = "ffn_ratio"
    label = "transformer with a narrower feed-forward block"
    spec_defaults = {"init": "random"}  # another FFN width: the teacher's layers cannot be copied
    options_model = FfnRatioOptions

    def config(self, t_config, spec, *, where="student"):
        hidden = spec.hidden or t_config.hidden_size
        width = max(1, round(spec.options["ratio"] * hidden))
        config, plan, _ = super().config(t_config, spec.model_copy(update={"intermediate": width}), where=where)
        return config, plan, False


cascade_kd.register_family(FfnRatioFamily())

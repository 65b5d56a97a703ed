"""Which soft-label source can serve which method under which view plan: decided once, here.

A soft-label source declares what it ``serves`` (the capabilities below; its recipe section's
``serves()``, which may depend on the settings, e.g. an ensemble serves what all its members
serve); a method declares
whether it learns from soft labels at all (``uses_soft_labels``), whether it learns from mixed
views (``mixed_views``: such a method needs a plan that mixes, every other method refuses one),
how many views of each sample a step shows it (``views_per_step``: 2 for a method that learns from
two views of every sample, which the plan must give), and what else it needs from its source
(``source_needs``, and its settings' :meth:`~softdistill.methods.MethodConfig.soft_label_needs`, each
with the reason).  :func:`compatibility_problems` is called when a recipe is validated, before any
teacher, VAE or store is made; :func:`stored_view_problems` decides whether a store's views are the
ones a recipe asks for and :func:`encoding_problems` whether its encoding carries what the method
reads (when the recipe loads, for a store named by its label recipe; when the store opens, otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ONLINE", "INPUT_GRAD", "MIXED", "ANY_VIEW", "FULL_LOGITS", "CAPABILITIES", "STANDARDIZED", "method_needs",
           "compatibility_problems", "stored_view_problems", "encoding_problems"]

ONLINE = "online"          # soft labels of any input, computed when asked (e.g. new, learned augmentations)
INPUT_GRAD = "input_grad"  # soft labels differentiable with respect to the input
MIXED = "mixed"            # soft labels of mixed views (the mixed image, not a blend of two labels)
ANY_VIEW = "any_view"      # every view of a plan, also a fresh view each epoch (views: 0)
FULL_LOGITS = "full_logits"  # every class's logit (a store's top-k record rebuilds the tail, evenly spread)

#: why a method on standardized logits (Sun et al., CVPR 2024) needs every class's logit
STANDARDIZED = "logit standardization takes the mean and standard deviation of every class's logit"

CAPABILITIES = {
    ONLINE: "soft labels of new inputs, computed when asked",
    INPUT_GRAD: "gradients of the soft labels with respect to the input",
    MIXED: "soft labels of mixed (mixup / cutmix) views",
    ANY_VIEW: "every view, also a fresh one each epoch (data.views: 0)",
    FULL_LOGITS: "the teacher's full logit vector (every class's logit, not a top-k summary)",
}


def method_needs(method: Any, config: Any) -> dict[str, str]:
    """What ``method`` (a Method class) with its settings ``config`` needs of its source: each capability
    with the reason (empty for the method's own ``source_needs``, which its messages explain)."""
    return {**{need: "" for need in method.source_needs}, **config.soft_label_needs()}


def compatibility_problems(method: Any, config: Any, source: Any | None, plan: Any) -> list[str]:
    """What stops ``method`` (a Method class) with its settings ``config`` from learning from ``source`` (a
    soft-label section, a :class:`~softdistill.soft_labels.base.SourceConfig`, or None) under ``plan`` (a
    ViewPlan); empty when they fit."""
    name = method.Config.model_fields["name"].default
    problems = []
    if method.uses_soft_labels and source is None:
        problems.append(f"method {name!r} learns from soft labels: add a soft_labels section "
                        "(e.g. soft_labels: {source: teacher, recipe: teacher.yaml})")
    if not method.uses_soft_labels and source is not None:
        problems.append(f"method {name!r} does not use soft labels: remove the soft_labels section")
    if method.mixed_views and not plan.mixes:
        problems.append(f"method {name!r} learns from mixed views: set data.augment.mix (mixup or cutmix)")
    if plan.mixes and not method.mixed_views:
        problems.append(f"data.augment.mix: {plan.mix} mixes views, but method {name!r} learns from one label per "
                        "sample; use a method made for mixed views (ida) or set mix: none")
    if method.views_per_step != plan.views_per_step:
        problems.append(f"method {name!r} learns from two views of each sample per step: set data.views_per_step: 2 "
                        "(a sample's second view is its next view of the plan, see docs/data.md)"
                        if method.views_per_step == 2 else
                        f"data.views_per_step: {plan.views_per_step} shows each sample twice per step, but method "
                        f"{name!r} learns from one view per step: set data.views_per_step: 1")
    if source is None:
        return problems
    source_name = source.source
    serves = source.serves()
    if plan.mixes and MIXED not in serves:
        problems.append(f"soft_labels.source {source_name!r} cannot serve {CAPABILITIES[MIXED]}{source.why_not(MIXED)}: "
                        "its soft label would belong to one of the two mixed images; use source: teacher (run online "
                        "on the mixed image)")
    needs = method_needs(method, config)
    for need in sorted(set(needs) - serves):
        why = f" ({needs[need]})" if needs[need] else ""
        problems.append(f"method {name!r} needs {CAPABILITIES[need]}{why}, which soft_labels.source {source_name!r} "
                        f"cannot serve{source.why_not(need)}; use source: teacher")
    if ANY_VIEW not in serves and plan.distinct_views is None:
        problems.append(f"soft_labels.source {source_name!r}{source.why_not(ANY_VIEW)} holds the soft labels of a fixed "
                        "set of views, but the augmentation draws a fresh view every epoch: set data.views to the "
                        "number of views per sample to label (each is labelled once), or turn data.augment off")
    return problems


def stored_view_problems(stored: Any, wanted: Any, where: str) -> list[str]:
    """What stops soft labels stored for the views of plan ``stored`` from serving a run whose
    plan is ``wanted`` (both ViewPlans); ``where`` names the store in messages.

    View v of a sample is the same image under any number of views, so a store of V views serves
    a recipe that asks for V or fewer; the definitions of the views (:meth:`ViewPlan.definition`)
    must be equal.
    """
    if differ := stored.differences(wanted):
        mine, theirs = stored.definition(), wanted.definition()
        if not mine or not theirs:
            said = ("the store's views are " + ("augmented" if mine else "the clean images") + ", the recipe's "
                    + ("augmented" if theirs else "the clean images"))
        else:
            said = "; ".join(f"{key} {mine.get(key)!r} in the store, {theirs.get(key)!r} in the recipe" for key in differ)
        return [f"{where} holds the views of another view plan ({said}): the student would see images the teacher "
                "did not label. Give the recipe the store's data.augment and data.view_seed (the view seed is "
                "data.view_seed, else the run seed), or label a store for the recipe's views"]
    have, want = stored.distinct_views, wanted.distinct_views
    if want is not None and have is not None and want > have:
        return [f"{where} holds {have} view(s) per sample, the recipe asks for {want} (data.views): set data.views to "
                f"at most {have}, or label a store with more views"]
    return []


def encoding_problems(needs: Mapping[str, str], encoding: Mapping[str, Any], where: str) -> list[str]:
    """What stops a store whose records are encoded as ``encoding`` (a manifest's or a label recipe's
    ``encoding`` section) from serving a method that ``needs`` these capabilities (:func:`method_needs`);
    ``where`` names the store in messages.  A top-k record keeps the k largest logits and the tail's
    log-mass, not every class's logit."""
    if FULL_LOGITS not in needs or encoding["kind"] == "full":
        return []
    why = f" ({needs[FULL_LOGITS]})" if needs[FULL_LOGITS] else ""
    return [f"{where} holds top-k soft labels (encoding: {{kind: topk, k: {encoding['k']}}}), which do not carry "
            f"{CAPABILITIES[FULL_LOGITS]} that the method needs{why}: label a store with encoding: {{kind: full}}"]

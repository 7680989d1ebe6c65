"""Early stopping and the validation hook (pure: a scripted validation curve and a torch model standing
in for the trainer): patience, min_delta, when validation runs, which weights are kept and restored, the
summary record and a resume through state_dict."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hybridrec.train.validation import EarlyStopping, ValidationHook, select


def test_early_stopping_counts_validations_without_improvement() -> None:
    stop = EarlyStopping(patience=2)
    assert stop.observe(10, 0.1) and stop.stop_reason() is None
    assert stop.observe(20, 0.2)
    assert not stop.observe(30, 0.2)  # equal is no improvement
    assert stop.stop_reason() is None
    assert not stop.observe(40, 0.15)
    reason = stop.stop_reason("full/NDCG@10")
    assert reason is not None and "full/NDCG@10" in reason and "step 20" in reason and "2 validations" in reason
    assert (stop.best_step, stop.best_value) == (20, 0.2)


def test_min_delta_and_patience_zero() -> None:
    stop = EarlyStopping(patience=1, min_delta=0.01)
    stop.observe(1, 0.5)
    assert not stop.observe(2, 0.505) and stop.best_step == 1  # within min_delta
    assert stop.stop_reason() is not None
    never = EarlyStopping(patience=0)
    for step in range(1, 50):
        never.observe(step, 1.0 / step)
    assert never.stop_reason() is None and never.best_step == 1


class Scripted:
    """Validation whose value is a scripted function of the model's single weight."""

    def __init__(self, values: dict[float, float]):
        self.values, self.calls = values, 0

    def __call__(self, chunks) -> dict[str, dict[str, float]]:
        self.calls += 1
        weight = float(chunks[0].weight.detach().reshape(-1)[0])
        return {"full": {"NDCG@10": self.values[weight], "HR@10": 2 * self.values[weight]}}


def trainer_with_weight(value: float) -> SimpleNamespace:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return SimpleNamespace(chunks=[model])


def set_weight(trainer: SimpleNamespace, value: float) -> None:
    with torch.no_grad():
        trainer.chunks[0].weight.fill_(value)


def test_hook_validates_when_due_stops_and_restores_the_best_weights() -> None:
    # weights 1..8 after steps 1..8; validation value peaks at weight 4 (step 4)
    curve = {1.0: 0.1, 2.0: 0.2, 3.0: 0.3, 4.0: 0.5, 5.0: 0.4, 6.0: 0.45, 7.0: 0.3, 8.0: 0.2}
    scripted = Scripted({w * 1.0: v for w, v in curve.items()})
    hook = ValidationHook(scripted, eval_every=2, total_steps=100, patience=2)
    trainer = trainer_with_weight(0.0)
    reasons = {}
    for step in range(1, 9):
        set_weight(trainer, float(step))
        reasons[step] = hook.after_step(step, trainer)
        if reasons[step]:
            break
    assert scripted.calls == 4  # steps 2, 4, 6, 8
    assert [p["step"] for p in hook.curve] == [2, 4, 6, 8]
    assert reasons[8] is not None and all(reasons[s] is None for s in range(1, 8))
    record = hook.record(final_step=8)
    assert record["best_step"] == 4 and record["best_value"] == 0.5 and record["early_stopped"]
    assert record["best_metrics"] == {"full": {"NDCG@10": 0.5, "HR@10": 1.0}}
    assert record["stopped_step"] == 8 and record["test_weights"] == "best"
    with hook.best_weights(trainer) as swapped:
        assert swapped and float(trainer.chunks[0].weight) == 4.0
    assert float(trainer.chunks[0].weight) == 8.0  # the last weights are back
    assert hook.restore_best(trainer) and float(trainer.chunks[0].weight) == 4.0


def test_last_step_is_validated_and_the_run_reaches_its_steps() -> None:
    scripted = Scripted({float(w): float(w) for w in range(1, 8)})
    hook = ValidationHook(scripted, eval_every=3, total_steps=7, patience=5)
    trainer = trainer_with_weight(0.0)
    for step in range(1, 8):
        set_weight(trainer, float(step))
        assert hook.after_step(step, trainer) is None
    assert [p["step"] for p in hook.curve] == [3, 6, 7]
    record = hook.record(final_step=7)
    assert record["best_step"] == 7 and not record["early_stopped"] and "train.steps=7" in record["stopped"]


def test_keep_best_false_keeps_no_weights() -> None:
    hook = ValidationHook(Scripted({1.0: 0.3}), eval_every=1, total_steps=1, keep_best=False)
    trainer = trainer_with_weight(1.0)
    hook.after_step(1, trainer)
    assert not hook.restore_best(trainer) and hook.record()["test_weights"] == "last"


def test_state_dict_round_trip_keeps_curve_patience_and_best_weights() -> None:
    scripted = Scripted({1.0: 0.5, 2.0: 0.1, 3.0: 0.1})
    hook = ValidationHook(scripted, eval_every=1, total_steps=10, patience=2)
    trainer = trainer_with_weight(1.0)
    hook.after_step(1, trainer)
    set_weight(trainer, 2.0)
    hook.after_step(2, trainer)
    resumed = ValidationHook(scripted, eval_every=1, total_steps=10, patience=2)
    resumed.load_state_dict(hook.state_dict())
    set_weight(trainer, 3.0)
    assert resumed.after_step(3, trainer) is not None  # second validation without improvement
    assert resumed.restore_best(trainer) and float(trainer.chunks[0].weight) == 1.0
    assert [p["step"] for p in resumed.curve] == [1, 2, 3]


def test_a_rebuilt_model_does_not_take_stale_weights() -> None:
    hook = ValidationHook(Scripted({1.0: 0.5}), eval_every=1, total_steps=5)
    hook.after_step(1, trainer_with_weight(1.0))
    other = SimpleNamespace(chunks=[torch.nn.Linear(2, 1, bias=False)])  # another shape: another split
    assert not hook.restore_best(other)
    assert hook.record()["lost_best"] is not None


def test_select_and_bad_every() -> None:
    assert select({"full_excl": {"HR@10": 0.25}}, "full_excl/HR@10") == 0.25
    with pytest.raises(ValueError):
        ValidationHook(Scripted({}), eval_every=0, total_steps=1)

"""A PyTorch Lightning student distilled from a softdistill store: KD, WSL and IDA (isotonic KD on mixup).

    pip install 'softdistill[lightning]'
    python examples/lightning_store.py            # digits, CPU, about a minute

A teacher is trained (with Lightning too), its soft labels of every view are labelled into two stores
(crop views for KD and WSL, mixup views for IDA), and each method trains a student twice: from the store
and from the teacher run online on the same batches.  The two students must have the same weights, bit
for bit: the store replays exactly the views the student sees.  Under several processes
(``Trainer(strategy="ddp", devices=N)``) the same code trains what one process does, to float rounding:
the sampler gives each process its slice of every global batch, and ``global_batch_weight`` weighs each
process's loss by its share.
"""

import logging
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch

import softdistill as sd

EPOCHS, BATCH, SEED = 4, 32, 0


# --------------------------------------------------------------------------- what a Lightning user writes

class Distillation(L.LightningModule):
    """Any softdistill method (by name) as a LightningModule."""

    def __init__(self, method: str, student: torch.nn.Module, soft_labels: torch.nn.Module | None, classes: int,
                 **settings):
        super().__init__()
        self.method = sd.build_method(method, student, classes, soft_labels, **settings)

    def training_step(self, batch: sd.Batch, index: int) -> torch.Tensor:
        loss = sum(self.method(batch).losses.values())
        self.log("loss", loss, batch_size=len(batch))
        return loss * sd.global_batch_weight(len(batch), loss.device)  # DDP: the mean over the global batch

    def configure_optimizers(self):
        return torch.optim.SGD(self.method.trainable_parameters(), lr=0.02, momentum=0.9)


def train(method, views, soft_labels=None, **settings):
    """A student trained by ``method`` on ``views`` (a ViewDataset) for EPOCHS epochs, from seed SEED."""
    torch.manual_seed(SEED)
    student = sd.build_model("mlp", data.num_classes, data.in_channels, data.image_size)
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, use_distributed_sampler=False, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Distillation(method, student, soft_labels, data.num_classes, **settings),
                views.loader(BATCH, first_epoch=0, shuffle=True, drop_last=True, seed=SEED))
    return student


# --------------------------------------------------------------------------- the check

def accuracy(model: torch.nn.Module) -> float:
    """Top-1 test accuracy (%)."""
    with torch.no_grad():
        right = sum(int((model.eval()(b.x).argmax(1) == b.y).sum()) for b in sd.BatchLoader(data.test, 512, normalise))
    return 100 * right / len(data.test)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


if __name__ == "__main__":
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banner per fit
    data = sd.prepare_data("digits", val_size=125)  # 1312 training images: 41 batches of 32, labelled as shown
    normalise = sd.BatchTransform(data.mean, data.std)
    teacher = train("ce", sd.ViewDataset(data.train, sd.ViewPlan(seed=1, crop_padding=1), normalise))
    folder = Path(tempfile.mkdtemp())
    plans = {"crop": sd.ViewPlan(seed=SEED, crop_padding=1, views=EPOCHS),
             "mixup": sd.ViewPlan(seed=SEED, crop_padding=1, mix="mixup", views=EPOCHS)}
    stores = {}
    for name, plan in plans.items():
        sd.label_store(teacher, data, plan, folder / name, batch_size=BATCH, quiet=True)
        stores[name] = sd.Store(folder / name)
    methods = [("kd", "crop", {"alpha": 0.9, "temperature": 4.0}), ("wsl", "crop", {}),
               ("ida", "mixup", {"correction": "replace"})]
    failed = []
    for method, views, settings in methods:
        plan = plans[views]
        dataset = sd.ViewDataset(data.train, plan, normalise)
        stored = sd.StoredSoftLabels.checked(stores[views], data.train.ids, data.train.labels, plan)
        from_store = train(method, dataset, stored, **settings)
        online = train(method, dataset, sd.FrozenTeacher(teacher), **settings)
        same = same_weights(from_store, online)
        print(f"{method}: student from the store {'==' if same else '!='} student from the online teacher "
              f"({EPOCHS} epochs of {len(data.train) // BATCH} batches of {BATCH}); test accuracy "
              f"{accuracy(from_store):.1f} % (teacher {accuracy(teacher):.1f} %)")
        failed += [] if same else [method]
    sys.exit(1 if failed else 0)

"""Soft labels from a store in a Hugging Face-style training loop, read by ``sample_id`` and ``view`` columns.

    python examples/hf_style_loop.py              # digits, CPU, seconds

``transformers`` is not installed here (it is a heavy dependency for CI), so this is the plain-loop
equivalent of a ``transformers.Trainer`` whose ``compute_loss`` is overridden: ``compute_loss(model,
inputs)`` below has that method's signature and reads the same dict of columns (``pixel_values``,
``labels``, and the two columns a store needs, ``sample_id`` and ``view``); in a ``Trainer`` subclass it
is the body of ``compute_loss(self, model, inputs, return_outputs=False, **kwargs)``, with
``self.store`` and the ``GlobalBatchSampler`` given to the DataLoader that ``get_train_dataloader``
returns.  The loop around it does what the Trainer does: forward, loss, backward, step.

The student trained from the store must have the weights of the student trained from the teacher run
online on the same batches, bit for bit.
"""

import sys
import tempfile

import torch

import softdistill as sd

EPOCHS, BATCH, SEED, TEMPERATURE, ALPHA = 4, 32, 0, 4.0, 0.9


def columns(batch: sd.Batch) -> dict[str, torch.Tensor]:
    """A softdistill batch as the columns of a Hugging Face dataset."""
    return {"pixel_values": batch.x, "labels": batch.y, "sample_id": batch.sample_id, "view": batch.view}


class DistillationTrainer:
    """What a ``transformers.Trainer`` subclass holds and overrides for KD: ``soft_labels(inputs)`` gives the
    teacher's logits of a batch of columns."""

    def __init__(self, soft_labels):
        self.soft_labels = soft_labels

    def compute_loss(self, model, inputs):
        """``(1 - alpha) CE + alpha T^2 KL``, weighted by this process's share of the global batch."""
        logits = model(inputs["pixel_values"])
        loss = ((1 - ALPHA) * sd.cross_entropy(logits, inputs["labels"])
                + ALPHA * sd.kd_loss(logits, self.soft_labels(inputs), TEMPERATURE))
        return loss * sd.global_batch_weight(len(logits), loss.device)  # DDP: the mean over the global batch


def accuracy(model: torch.nn.Module) -> float:
    """Top-1 test accuracy (%)."""
    with torch.no_grad():
        right = sum(int((model.eval()(b.x).argmax(1) == b.y).sum()) for b in sd.BatchLoader(data.test, 512, normalise))
    return 100 * right / len(data.test)


def train(loader, compute_loss):
    """What the Trainer's loop does with ``compute_loss(model, inputs)``, for EPOCHS epochs from seed SEED."""
    torch.manual_seed(SEED)
    model = sd.build_model("mlp", data.num_classes, data.in_channels, data.image_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(EPOCHS):
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            loss = compute_loss(model, columns(batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


if __name__ == "__main__":
    data = sd.prepare_data("digits", val_size=125)  # 1312 training images: 41 batches of 32, labelled as shown
    normalise = sd.BatchTransform(data.mean, data.std)
    teacher = train(sd.ViewDataset(data.train, None, normalise).loader(BATCH, first_epoch=0, seed=1),
                    lambda model, inputs: sd.cross_entropy(model(inputs["pixel_values"]), inputs["labels"])).eval()
    plan = sd.ViewPlan(seed=SEED, crop_padding=1, views=EPOCHS)
    folder = tempfile.mkdtemp()
    sd.label_store(teacher, data, plan, folder, encoding="full", batch_size=BATCH, quiet=True)
    store = sd.Store(folder)
    store.check_fit(data.train.ids, data.train.labels, plan)
    loader = sd.ViewDataset(data.train, plan, normalise).loader(BATCH, first_epoch=0, drop_last=True, seed=SEED)

    def online(inputs):
        with torch.no_grad():
            return teacher(inputs["pixel_values"])

    from_store = train(loader, DistillationTrainer(lambda inputs: store.lookup(inputs["sample_id"], inputs["view"])
                                                   ).compute_loss)
    from_teacher = train(loader, DistillationTrainer(online).compute_loss)
    same = all(torch.equal(a, b) for a, b in zip(from_store.state_dict().values(), from_teacher.state_dict().values()))
    print(f"kd: student from the store {'==' if same else '!='} student from the online teacher "
          f"({EPOCHS} epochs of {len(data.train) // BATCH} batches of {BATCH}); test accuracy: teacher "
          f"{accuracy(teacher):.1f} %, student {accuracy(from_store):.1f} %")
    sys.exit(0 if same else 1)

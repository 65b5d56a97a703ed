"""softdistill inside a loop of your own: your augmentation pipeline made addressable (in memory and in the
stream loader's workers), a store labelled from Python in one call and looked up by id and view, the
fit check recipes use, the global-batch sampler, and exact DDP with uneven slices."""

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import softdistill as sd
from softdistill.data.samples import FileSet
from softdistill.data.stream import StreamLoader, decode_all
from softdistill.store import Encoding

Image = pytest.importorskip("PIL.Image")


# ------------------------------------------------------------------------------- a RandAugment-like pipeline

def _shift(image, level):
    step = max(1, int(level * image.shape[-1] / 3))
    out = torch.zeros_like(image)
    out[..., step:] = image[..., :-step]
    return out


#: operations on uint8 C x H x W images, each at a level in [0, 1] (RandAugment, Cubuk et al. 2020)
OPERATIONS = [
    lambda x, m: x,                                                               # identity
    lambda x, m: (x.float() * (1 + m)).clamp(0, 255).to(torch.uint8),            # brightness
    lambda x, m: ((x.float() - x.float().mean()) * (1 + m) + x.float().mean()).clamp(0, 255).to(torch.uint8),
    lambda x, m: x & (0xFF << int(m * 4)) & 0xFF,                                # posterize
    lambda x, m: torch.where(x >= int(255 * (1 - m)), 255 - x, x),               # solarize
    lambda x, m: 255 - x,                                                        # invert
    _shift,                                                                      # translate
    lambda x, m: x.flip(-2),                                                     # vertical flip
]


def rand_augment(image, generator, ops=2, magnitude=9):
    """Two operations drawn uniformly, each at a level drawn up to ``magnitude`` / 10: from ``generator`` only."""
    for _ in range(ops):
        op = OPERATIONS[int(torch.randint(len(OPERATIONS), (1,), generator=generator))]
        image = op(image, float(torch.rand(1, generator=generator)) * magnitude / 10)
    return image


def rand_augment_global(image, ops=2, magnitude=9):
    """The same pipeline drawing from torch's global random generator, as torchvision's do."""
    for _ in range(ops):
        image = OPERATIONS[int(torch.randint(len(OPERATIONS), (1,)))](image, float(torch.rand(1)) * magnitude / 10)
    return image


def ignores_its_generator(image, generator):
    return rand_augment_global(image)


def write_files(root, n=24, size=12, seed=0):
    """``n`` random RGB PNG images of ``size`` pixels, labels ``i mod 3``, ids ``100 + 2 i``: a FileSet."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        files.append(path)
    return FileSet(tuple(files), torch.arange(n) % 3, size, torch.arange(n) * 2 + 100)


TRANSFORM = sd.BatchTransform([0.5] * 3, [0.25] * 3)


def plan_with(fn, draws_from="generator", **augment):
    return sd.ViewPlan(seed=3, views=4, transform=sd.ViewTransform(fn, "randaug-2-9", draws_from=draws_from), **augment)


@pytest.mark.parametrize("augment", [{}, {"crop_padding": 2, "hflip": True, "mix": "cutmix"}])
def test_your_own_pipeline_makes_the_same_views_in_memory_and_in_stream_workers(tmp_path, augment):
    files = write_files(tmp_path / "images")
    plan = plan_with(rand_augment, **augment)
    memory = sd.BatchLoader(decode_all(files), 8, TRANSFORM, shuffle=True, plan=plan, seed=1)
    stream = StreamLoader(files, 8, TRANSFORM, device=torch.device("cpu"), workers=2, shuffle=True, plan=plan, seed=1)
    for epoch in (1, 2):
        memory.set_epoch(epoch)
        stream.set_epoch(epoch)
        pairs = list(zip(memory, stream, strict=True))
        for a, b in pairs:
            assert torch.equal(a.x, b.x) and torch.equal(a.sample_id, b.sample_id) and torch.equal(a.view, b.view)
    plain = sd.BatchLoader(decode_all(files), 8, TRANSFORM, shuffle=True, plan=sd.ViewPlan(seed=3, views=4, **augment),
                           seed=1)
    plain.set_epoch(2)
    assert not torch.equal(next(iter(plain)).x, pairs[0][0].x)  # the pipeline changed the images


def test_a_pipeline_of_your_own_is_labelled_into_a_store_and_replayed_exactly(tmp_path):
    data = decode_all(write_files(tmp_path / "images"))
    plan = plan_with(rand_augment, crop_padding=1)
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 3))
    sd.label_store(teacher, data, plan, tmp_path / "store", mean=[0.5] * 3, std=[0.25] * 3, batch_size=8, quiet=True)
    store = sd.Store(tmp_path / "store")
    assert store.manifest["views"]["pipeline"] == "randaug-2-9" and store.plan.pipeline == "randaug-2-9"
    store.check_fit(data.ids, data.labels, plan)
    loader = sd.BatchLoader(data, 8, TRANSFORM, shuffle=True, plan=plan, seed=5)
    for epoch in (1, 2, 3, 4, 5):
        loader.set_epoch(epoch)
        for batch in loader:
            with torch.inference_mode():
                online = teacher(batch.x)
            torch.testing.assert_close(store.lookup(batch.host_sample_id, batch.host_view), online, rtol=0, atol=0)
    other = plan_with(rand_augment, crop_padding=1).model_copy(update={"pipeline": "randaug-2-10", "transform": None})
    [problem] = store.fit_problems(data.ids, data.labels, other)
    assert "pipeline 'randaug-2-9' in the store, 'randaug-2-10' in the recipe" in problem


def test_a_pipeline_drawing_from_the_global_rng_is_stopped_in_memory_and_in_workers(tmp_path):
    files = write_files(tmp_path / "images")
    plan = plan_with(ignores_its_generator)
    memory = sd.BatchLoader(decode_all(files), 8, TRANSFORM, shuffle=True, plan=plan)
    with pytest.raises(sd.ViewTransformError, match=r"view transform 'randaug-2-9' made two different images of one "
                                                    r"view \(sample id \d+, view \d\): it draws random numbers from "
                                                    r"something other than the generator it is given"):
        list(memory)
    stream = StreamLoader(files, 8, TRANSFORM, device=torch.device("cpu"), workers=2, shuffle=True, plan=plan)
    with pytest.raises(sd.ViewTransformError, match="made two different images of one view") as raised:
        list(stream)
    assert "DataLoader worker" not in str(raised.value)  # the worker's error as it is
    with pytest.raises(sd.ViewTransformError, match="made two different images"):
        sd.label_store(torch.nn.Flatten(), decode_all(files), plan, tmp_path / "store", mean=[0.5] * 3, std=[0.25] * 3,
                       quiet=True)
    assert not (tmp_path / "store" / "summary.json").exists()


def test_a_global_rng_pipeline_is_addressable_with_draws_from_global_and_leaves_the_rng_alone(tmp_path):
    data = decode_all(write_files(tmp_path / "images"))
    plan = plan_with(rand_augment_global, draws_from="global")
    loader = sd.BatchLoader(data, 8, TRANSFORM, plan=plan)
    torch.manual_seed(7)
    first = [b.x for b in loader]
    state = torch.get_rng_state()
    assert all(torch.equal(a, b.x) for a, b in zip(first, loader))
    assert torch.equal(state, torch.get_rng_state())  # seeded per view inside a fork: the model's RNG is untouched


def test_torchvisions_own_randaugment_is_addressable_in_memory_and_in_workers(tmp_path):
    """The optional vision extra: torchvision's pipeline draws from torch's global RNG (draws_from='global')."""
    v2 = pytest.importorskip("torchvision.transforms.v2")
    files = write_files(tmp_path / "images")
    plan = sd.ViewPlan(seed=3, views=4, transform=sd.ViewTransform(v2.RandAugment(), "tv-randaugment",
                                                                  draws_from="global"))
    memory = sd.BatchLoader(decode_all(files), 8, TRANSFORM, shuffle=True, plan=plan, seed=1)
    stream = StreamLoader(files, 8, TRANSFORM, device=torch.device("cpu"), workers=2, shuffle=True, plan=plan, seed=1)
    for a, b in zip(memory, stream, strict=True):
        assert torch.equal(a.x, b.x)
    with pytest.raises(sd.ViewTransformError, match="made two different images"):  # the generator is ignored
        list(sd.BatchLoader(decode_all(files), 8, TRANSFORM, plan=plan_with(lambda image, g: v2.RandAugment()(image))))


def test_a_pipeline_returning_the_wrong_kind_of_image_is_named(tmp_path):
    data = decode_all(write_files(tmp_path / "images", n=4))
    floats = sd.BatchLoader(data, 4, TRANSFORM, plan=plan_with(lambda image, generator: image.float()))
    with pytest.raises(sd.ViewTransformError, match=r"returned torch.float32 of shape \(3, 12, 12\) for sample id "
                                                    r"100, view 0: it must return a uint8 C x H x W tensor"):
        list(floats)
    sizes = sd.BatchLoader(data, 4, TRANSFORM, plan=plan_with(lambda image, generator: image[:, :int(
        torch.randint(8, 12, (1,), generator=generator))]))
    with pytest.raises(sd.ViewTransformError, match="made images of several shapes"):
        list(sizes)
    named_only = sd.ViewPlan(seed=3, views=4, pipeline="randaug-2-9")
    with pytest.raises(sd.ViewTransformError, match="names the pipeline 'randaug-2-9' but holds no function"):
        list(sd.BatchLoader(data, 4, TRANSFORM, plan=named_only))


# ------------------------------------------------------------------------------- stores from Python

@pytest.fixture
def small():
    """A TensorSet of 20 images (1 x 4 x 4), 3 classes, ids 50, 53, ..."""
    images = torch.randint(0, 256, (20, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return sd.TensorSet(images, torch.arange(20) % 3, torch.arange(20) * 3 + 50)


def linear_teacher():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))


NORM = {"mean": [0.5], "std": [0.25]}


def test_label_store_in_one_call_resumes_and_refuses_another_store(tmp_path, small, capsys):
    plan = sd.ViewPlan(seed=1, crop_padding=1, hflip=True, views=3)
    teacher, calls = linear_teacher(), []

    def interrupted(batch):
        calls.append(len(batch))
        if len(calls) == 5:  # the probe and shard 0's three views went through: stop in shard 1
            raise KeyboardInterrupt
        return teacher(batch.x)

    with pytest.raises(KeyboardInterrupt):
        sd.label_store(interrupted, small, plan, tmp_path / "s", **NORM, batch_size=8, shard_samples=8, quiet=True,
                       identity={"model": None, "name": "linear"})
    assert len(list((tmp_path / "s").glob("shard-00000-*.npy"))) == 1
    summary = sd.label_store(lambda batch: teacher(batch.x), small, plan, tmp_path / "s", **NORM, batch_size=8,
                             shard_samples=8, identity={"model": None, "name": "linear"})
    out = capsys.readouterr()
    assert "1 of this process's 3 shards are already there" in out.out  # (the progress bar: on a terminal)
    assert summary["labelled_records"] == 12 * 3  # shards 1 and 2 only
    store = sd.Store(tmp_path / "s")
    batch = sd.BatchLoader(small, 20, sd.BatchTransform(**NORM), plan=plan).batch(small.ids, 2)
    # labelled 8 at a time, compared in one batch of 20: equal to the rounding of another GEMM blocking
    torch.testing.assert_close(store.lookup(small.ids, views=2), teacher(batch.x).detach())
    with pytest.raises(ValueError, match="the encoding is for 5 classes, the labeller gives 3 logits"):
        sd.label_store(teacher, small, plan, tmp_path / "other", **NORM, encoding=Encoding("full", 5),
                       quiet=True)
    with pytest.raises(sd.StoreError, match=r"holds another store \(labelled with other settings\):\n  views.fingerprint: "
                                            r"'\w+' -> '\w+'\n  views.seed: 1 -> 2\n"):
        sd.label_store(lambda batch: teacher(batch.x), small, plan.model_copy(update={"seed": 2}), tmp_path / "s",
                       **NORM, shard_samples=8, identity={"model": None, "name": "linear"}, quiet=True)


def test_store_lookup_by_id_and_view_on_a_device_and_its_bad_input(tmp_path, small):
    plan = sd.ViewPlan(seed=1, hflip=True, views=2)
    sd.label_store(linear_teacher(), small, plan, tmp_path / "s", **NORM, quiet=True)
    store = sd.Store(tmp_path / "s")
    logits = store.lookup(torch.tensor([53, 50]), torch.tensor([1, 0]), device="cpu")
    assert logits.shape == (2, 3) and logits.dtype == torch.float32
    assert torch.equal(logits[0], store.lookup([53], 1)[0])
    with pytest.raises(sd.StoreError, match=r"1 of the 2 sample ids asked for are not in the store \(e.g. sample id 51\)"):
        store.lookup([50, 51], 0)
    with pytest.raises(sd.StoreError, match=r"view 2 asked for, the store holds views 0..1"):
        store.lookup([50], 2)
    with pytest.raises(sd.StoreError, match="view -1 asked for, views are counted from 0"):
        store.lookup([50], -1)


def test_write_store_checks_its_header_and_the_labels_at_write_time(tmp_path, small):
    enc = Encoding("full", 3)
    ids, labels = small.ids, small.labels
    ones = lambda rows, views: torch.ones(len(rows), 3)  # noqa: E731
    write = lambda header, label=ones, views=1: sd.write_store(  # noqa: E731
        tmp_path / "w", header, ids, labels, label, encoding=enc, views=views, shard_samples=8, batch_size=8, quiet=True)
    with pytest.raises(sd.StoreError, match=r"header\['data'\] must be a dict, got NoneType; header\['teacher'\] must be"):
        write({})
    with pytest.raises(sd.StoreError, match=r"header\['teacher'\] must be a dict"):
        write({"data": {}})
    four = sd.ViewPlan(hflip=True, views=4).recorded()
    with pytest.raises(sd.StoreError, match=r"views=2 was given, the header's view plan has 4 distinct view\(s\)"):
        write({"data": {}, "teacher": {}, "views": four}, views=2)
    with pytest.raises(sd.StoreError, match="says fingerprint 'edited', the plan it records has"):
        write({"data": {}, "teacher": {}, "views": {**four, "fingerprint": "edited"}}, views=4)
    with pytest.raises(sd.StoreError, match=r"not view-plan settings: \['colour'\]"):
        write({"data": {}, "teacher": {}, "views": {"colour": "red"}})
    assert not (tmp_path / "w").exists()  # refused before anything was written
    header = {"data": {}, "teacher": {}, "views": sd.ViewPlan().recorded()}
    with pytest.raises(sd.StoreError, match=r"logits of sample ids \[50, 53, 56, 59, 62\]\.\.\. have shape \(8, 2\), the "
                                            r"store needs 8 x 3"):
        write(header, lambda rows, views: torch.ones(len(rows), 2))

    def nan_at_59(rows, views):
        logits = torch.ones(len(rows), 3)
        logits[ids[rows] == 59] = float("nan")
        return logits

    with pytest.raises(sd.StoreError, match=r"non-finite logits \(NaN or infinite\) for 1 of 8 samples, sample ids \[59\]"):
        write(header, nan_at_59)
    assert write(header)["records"] == 20  # the same folder, once the labels are good


def test_a_store_fits_by_the_rule_recipes_use(tmp_path, small):
    plan = sd.ViewPlan(seed=1, hflip=True, views=2)
    sd.label_store(linear_teacher(), small, plan, tmp_path / "s", **NORM, quiet=True)
    store = sd.Store(tmp_path / "s")
    assert store.fit_problems(small.ids, small.labels, plan) == []
    assert store.fit_problems(small.ids[:5], small.labels[:5], plan.model_copy(update={"views": 1})) == []  # a subset
    [relabelled] = store.fit_problems(small.ids, (small.labels + 1) % 3, plan)
    assert "20 samples have another label in the store" in relabelled
    [more_views] = store.fit_problems(small.ids, small.labels, plan.model_copy(update={"views": 3}))
    assert "holds 2 view(s) per sample, the recipe asks for 3" in more_views
    with pytest.raises(sd.StoreError, match="holds the views of another view plan"):
        sd.StoredSoftLabels.checked(store, small.ids, small.labels, plan.model_copy(update={"seed": 9}))


# ------------------------------------------------------------------------------- the global-batch sampler

@pytest.mark.parametrize("world_size", [2, 3])
def test_the_sampler_gives_each_process_its_slice_of_the_global_batches(world_size):
    ids = torch.arange(300) * 7
    plan = sd.ViewPlan(seed=2, crop_padding=1, views=3, replay="random")
    single = sd.GlobalBatchSampler(ids, 61, first_epoch=0, plan=plan, seed=4, world_size=1)
    ranks = [sd.GlobalBatchSampler(ids, 61, first_epoch=0, plan=plan, seed=4, rank=r, world_size=world_size)
             for r in range(world_size)]
    for epoch in (0, 1):
        for sampler in [single, *ranks]:
            sampler.sampler.set_epoch(epoch)  # as Lightning does
        whole = list(single)
        slices = [list(r) for r in ranks]
        assert all(len(s) == len(whole) for s in slices)  # every process steps every time
        assert [sum(parts, []) for parts in zip(*slices)] == whole
        assert all(max(map(len, parts)) - min(map(len, parts)) <= 1 for parts in zip(*slices))  # near-equal slices
    blank = sd.TensorSet(torch.zeros(300, 1, 2, 2, dtype=torch.uint8), torch.zeros(300, dtype=torch.long), ids)
    rules = sd.BatchLoader(blank, 61, sd.BatchTransform([0.0], [1.0]), shuffle=True, plan=plan, seed=4)
    rules.set_epoch(2)  # softdistill's trainer counts from 1: its epoch 2 is the sampler's epoch 1 (from 0)
    single.set_epoch(1)
    assert [[(r, v) for r, v in zip(b.sample_id.div(7, rounding_mode="floor").tolist(), b.view.tolist())] for b in rules
            ] == list(single)
    with pytest.raises(ValueError, match="epoch -1 comes before the first epoch, 0"):
        single.set_epoch(-1)


# ------------------------------------------------------------------------------- exact DDP with any loop

def _train(rank, world_size, tmp, weighted):
    """Two epochs of a plain loop over ViewDataset.loader with global batch 61: DDP when world_size > 1."""
    torch.set_num_threads(1)
    data = torch.load(tmp / "data.pt")
    dataset = sd.ViewDataset(sd.TensorSet(*data), sd.ViewPlan(seed=0, crop_padding=1, hflip=True, views=2),
                             sd.BatchTransform([0.5], [0.25]))
    loader = dataset.loader(61, first_epoch=0, seed=3)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    trained = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for epoch in range(2):
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            loss = F.cross_entropy(trained(batch.x), batch.y)
            if weighted:
                loss = loss * sd.global_batch_weight(len(batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.state_dict()


def _ddp_worker(rank, port, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        result = {weighted: _train(rank, 2, tmp, weighted) for weighted in (True, False)}
        if rank == 0:
            torch.save(result, tmp / "ddp.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_a_plain_ddp_loop_with_the_sampler_and_the_weight_equals_one_process_at_a_global_batch_of_61(tmp_path,
                                                                                                       free_port):
    """300 samples: 4 global batches of 61 (31 + 30 per process) and one of 56, two epochs."""
    images = torch.randint(0, 256, (300, 1, 6, 6), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    torch.save((images, torch.arange(300) % 4, torch.arange(300) + 1000), tmp_path / "data.pt")
    one = _train(0, 1, tmp_path, weighted=True)
    mp.start_processes(_ddp_worker, args=(free_port, tmp_path), nprocs=2, join=True, start_method="spawn")
    two = torch.load(tmp_path / "ddp.pt")
    for key in one:
        torch.testing.assert_close(two[True][key], one[key], rtol=1e-5, atol=1e-6)
    gap = max((two[False][k] - one[k]).abs().max().item() for k in one)
    assert gap > 1e-4  # each process's plain mean: the uneven slices weigh samples unequally


def test_a_view_dataset_of_two_views_per_step_gives_each_batch_its_second_views_as_the_loader_does():
    """MLKD in a loop of your own: ViewDataset's batches carry batch.second, the samples' next views."""
    data = sd.TensorSet(torch.randint(0, 256, (8, 1, 6, 6), dtype=torch.uint8), torch.arange(8) % 2)
    plan, normalise = sd.ViewPlan(seed=0, crop_padding=1, views=4, views_per_step=2), sd.BatchTransform([0.5], [0.5])
    batch = sd.ViewDataset(data, plan, normalise).__getitems__([(0, 1), (3, 3)])
    assert batch.view.tolist() == [1, 3] and batch.second.view.tolist() == [2, 0]
    assert batch.second.sample_id.tolist() == batch.sample_id.tolist()
    reference = sd.BatchLoader(data, 2, normalise, plan=plan).batch([0, 3], [2, 0])
    assert torch.equal(batch.second.x, reference.x)
    assert sd.ViewDataset(data, sd.ViewPlan(seed=0, crop_padding=1, views=4), normalise)[0].second is None

"""Image folders and manifests streamed from disk, on real images written as PNG files.

Fashion-MNIST test images go into class folders (300 files + 2 corrupt ones), emoji renders into
a flat folder; every check reads them back through ImageFiles and its DataLoader.
"""

from __future__ import annotations

import csv
import shutil

import pytest
import torch
import torch.nn.functional as F

from contrastkit.data import DataNotFoundError, load_emoji, load_fashion_mnist, load_image_folder
from contrastkit.data._common import held_out_mask
from contrastkit.data.image_folder import (
    ImageFiles,
    SkippedFile,
    decode_image,
    image_batches,
    image_folder_loader,
)
from contrastkit.data.images import ImageDecodeError

PER_CLASS = 30
CORRUPT = {"3_dress/truncated.png", "7_sneaker/notes.png"}


def _save(array: torch.Tensor, path) -> None:
    """Write uint8 (C, H, W) as a PNG."""
    from PIL import Image

    a = array.numpy()
    Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(path)


def _folder_name(label: int, name: str) -> str:
    return f"{label}_{name.split('/')[0].split()[0].lower()}"


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    """root/<k>_<class>/<i>.png: 30 Fashion-MNIST test images per class, plus 2 corrupt files."""
    data = load_fashion_mnist("test")
    root = tmp_path_factory.mktemp("fmnist")
    originals = {}
    for label, name in enumerate(data.classes):
        folder = root / _folder_name(label, name)
        folder.mkdir()
        rows = (data.labels == label).nonzero().flatten()[:PER_CLASS]
        for j, row in enumerate(rows.tolist()):
            key = f"{folder.name}/{j:03d}.png"
            _save(data.images[row], root / key)
            originals[key] = (data.images[row], label)
    good = (root / "3_dress/000.png").read_bytes()
    (root / "3_dress/truncated.png").write_bytes(good[: len(good) // 2])
    (root / "7_sneaker/notes.png").write_text("this is a text file, not an image")
    (root / "0_t-shirt/readme.txt").write_text("not an image suffix: not listed")
    return root, originals


@pytest.fixture(scope="module")
def emoji(tmp_path_factory):
    """A flat folder of 80 emoji renders (RGB, 32 px)."""
    data = load_emoji(size=32)
    root = tmp_path_factory.mktemp("emoji")
    for i in range(80):
        _save(data.images[i], root / f"emoji_{i:04d}.png")
    return root, data.images[:80], data.texts[:80]


def test_class_folders_list_sorted_paths_and_labels(fmnist):
    root, originals = fmnist
    files = ImageFiles(root, image_size=28)
    assert len(files) == 10 * PER_CLASS + len(CORRUPT)  # listed, not decoded: corrupt ones too
    assert files.keys == sorted(files.keys)
    names = load_fashion_mnist("test").classes
    assert files.classes == [_folder_name(k, n) for k, n in enumerate(names)]
    assert files.channels == 1 and files.image_shape == (1, 28, 28)  # grayscale PNGs detected
    for i, key in enumerate(files.keys):
        if key in CORRUPT:
            continue
        image, label = originals[key]
        item = files[i]
        assert item["label"] == label == int(files.labels[i]) and item["index"] == i
        assert item["image"].dtype == torch.uint8
        assert torch.equal(item["image"], image)  # PNG is lossless: the exact pixels back


def test_corrupt_files_are_skipped_and_counted(fmnist):
    root, originals = fmnist
    files = ImageFiles(root, image_size=28)
    marks = [files[i] for i, k in enumerate(files.keys) if k in CORRUPT]
    assert all(isinstance(m, SkippedFile) for m in marks)
    assert {m.key for m in marks} == CORRUPT and all(
        "not a readable image" in m.reason for m in marks
    )
    kept, skipped, seen = 0, [], []
    for batch in image_batches(files, batch_size=64):
        kept += len(batch["images"])
        assert batch["skipped_files"] == len(batch["skipped"])
        skipped += [key for key, _ in batch["skipped"]]
        seen += batch["index"].tolist()
        assert batch["labels"].shape == batch["index"].shape == (len(batch["images"]),)
    assert kept == len(originals) and set(skipped) == CORRUPT
    assert seen == sorted(seen)  # fixed row order, for embedding a whole split
    # a batch of only corrupt files is an empty batch with the right shape, not a crash
    bad = [i for i, k in enumerate(files.keys) if k in CORRUPT]
    batch = next(iter(image_folder_loader(files, [bad])))
    assert batch["images"].shape == (0, 1, 28, 28) and batch["skipped_files"] == 2


def test_zero_and_two_workers_give_the_same_batches(fmnist):
    root, _ = fmnist
    files = ImageFiles(root, image_size=20, split="train")
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(files), generator=g)
    sampler = [order[i : i + 48].tolist() for i in range(0, 240, 48)]
    serial = list(image_folder_loader(files, sampler, workers=0))
    loader = image_folder_loader(files, sampler, workers=2)
    assert loader.persistent_workers and loader.num_workers == 2
    parallel = list(loader)
    assert len(serial) == len(parallel) == 5
    for a, b in zip(serial, parallel):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["index"], b["index"])
        assert torch.equal(a["labels"], b["labels"]) and a["skipped"] == b["skipped"]
    assert parallel[0]["images"].shape[1:] == (1, 20, 20)


def test_split_is_a_hash_of_the_path_and_stable_when_files_are_added(fmnist, tmp_path):
    root, _ = fmnist
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    everything = ImageFiles(copy, image_size=28)
    train = ImageFiles(copy, image_size=28, split="train", test_fraction=0.2, seed=3)
    test = ImageFiles(copy, image_size=28, split="test", test_fraction=0.2, seed=3)
    assert sorted(train.keys + test.keys) == everything.keys and not set(train.keys) & set(
        test.keys
    )
    mask = held_out_mask(everything.keys, 0.2, seed=3)
    assert test.keys == [k for k, m in zip(everything.keys, mask.tolist()) if m]
    assert 0.1 < len(test) / len(everything) < 0.3
    # new files (a new class folder and more files in old ones) never move existing files
    (copy / "9_ankle/extra").mkdir()
    for j in range(40):
        shutil.copy(copy / "9_ankle/000.png", copy / f"9_ankle/extra/{j}.png")
        if j < 10:
            shutil.copy(copy / "1_trouser/000.png", copy / f"1_trouser/new_{j}.png")
    train2 = ImageFiles(copy, image_size=28, split="train", test_fraction=0.2, seed=3)
    test2 = ImageFiles(copy, image_size=28, split="test", test_fraction=0.2, seed=3)
    assert set(train.keys) <= set(train2.keys) and set(test.keys) <= set(test2.keys)
    assert len(train2) + len(test2) == len(everything) + 50
    assert (
        ImageFiles(copy, image_size=28, split="test", test_fraction=0.2, seed=4).keys != test2.keys
    )


def test_flat_folder_of_rgb_images_is_unlabelled_and_resized(emoji):
    root, images, _ = emoji
    files = ImageFiles(root, image_size=24)
    assert len(files) == 80 and files.classes == [] and files.labels.eq(-1).all()
    assert files.channels == 3 and files.image_shape == (3, 24, 24)
    batch = next(iter(image_batches(files, batch_size=80)))
    assert batch["images"].shape == (80, 3, 24, 24) and batch["labels"].eq(-1).all()
    # the decoded colour images match a bilinear resize of the originals (not grey, not shifted)
    ref = F.interpolate(images.float(), size=(24, 24), mode="bilinear", antialias=True)
    err = (batch["images"].float() - ref).abs().mean() / 255
    assert float(err) < 0.03
    assert float((batch["images"].float().std(dim=1)).mean()) > 5  # channels differ: colour kept
    gray = ImageFiles(root, image_size=24, channels=1)
    assert gray[0]["image"].shape == (1, 24, 24)


def test_non_square_images_center_and_random_crop(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (30, 60, 3), generator=g, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    center = ImageFiles(tmp_path, image_size=16)
    assert center[0]["image"].shape == (3, 16, 16)
    assert torch.equal(center[0]["image"], center[0]["image"])  # deterministic
    # the centre crop of the resized image: 30x60 -> 16x32, columns 8..24
    full = ImageFiles(tmp_path, image_size=30)[0]["image"]  # (3, 30, 30) = columns 15..45
    assert torch.equal(full, torch.from_numpy(pixels[:, 15:45].transpose(2, 0, 1).copy()))
    rand = ImageFiles(tmp_path, image_size=30, crop="random")
    torch.manual_seed(0)
    crops = {tuple(rand[0]["image"][0, 0].tolist()) for _ in range(8)}
    assert len(crops) > 1  # different offsets along the long side


def test_transparency_becomes_white_and_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    logo = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # transparent black
    logo.paste((200, 0, 0, 255), (5, 5, 15, 15))  # an opaque red square
    logo.save(tmp_path / "logo.png")
    tall = Image.new("RGB", (40, 20), (0, 0, 255))  # wide, blue, left half green
    tall.paste((0, 255, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    tall.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    files = ImageFiles(tmp_path, image_size=20)
    logo_px = files[files.keys.index("logo.png")]["image"]  # (3, 20, 20)
    assert logo_px[:, 0, 0].tolist() == [255, 255, 255]  # corner: transparent -> white
    assert logo_px[:, 10, 10].tolist() == [200, 0, 0]
    photo = files.path(files.keys.index("photo.jpg"))
    upright = decode_image(photo, channels=3, image_size=None)
    assert upright.shape == (3, 40, 20)  # displayed upright: 20 wide, 40 tall
    assert upright[1, 5, 10] > 200 and upright[2, 35, 10] > 200  # green on top after turning
    assert files.thumbnail(files.keys.index("photo.jpg"), size=10).size == (5, 10)


def test_csv_and_parquet_manifests(emoji, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, _, texts = emoji
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "kind", "caption"])
        for i in range(20):
            writer.writerow([f"emoji_{i:04d}.png", ["face", "animal"][i % 2], texts[i]])
    files = ImageFiles(
        manifest, image_size=16, path_column="file", label_column="kind", caption_column="caption"
    )
    assert len(files) == 20 and files.classes == ["animal", "face"]
    assert files.labels[:2].tolist() == [1, 0] and files.texts[:3] == texts[:3]
    assert files.path(0) == root / "emoji_0000.png"
    batch = next(iter(image_batches(files, batch_size=5)))
    assert batch["texts"] == texts[:5] and batch["images"].shape == (5, 3, 16, 16)
    # Parquet with absolute paths and integer labels, in another folder
    table = pa.table(
        {
            "path": [str(root / f"emoji_{i:04d}.png") for i in range(10)],
            "label": [i % 3 for i in range(10)],
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    files = ImageFiles(tmp_path / "m.parquet", image_size=16, label_column="label")
    assert files.classes == ["0", "1", "2"] and files.labels.tolist() == [i % 3 for i in range(10)]
    assert isinstance(files[9], dict)
    with pytest.raises(
        ValueError,
        match=r"no column 'filename' \(path_column\); columns present: "
        r"'file', 'kind', 'caption'; pass path_column=",
    ):
        ImageFiles(manifest, image_size=16, path_column="filename")
    with pytest.raises(ValueError, match=r"no column 'cls' \(label_column\)"):
        ImageFiles(manifest, image_size=16, path_column="file", label_column="cls")
    (tmp_path / "gap.csv").write_text("path,label\na.png,x\n\n,y\n")
    with pytest.raises(
        ValueError, match=r"gap\.csv:4: empty 'path'; every row needs an image path"
    ):
        ImageFiles(tmp_path / "gap.csv", image_size=16)
    (tmp_path / "none.csv").write_text("path,label\n")
    with pytest.raises(ValueError, match=r"none\.csv: no rows"):
        ImageFiles(tmp_path / "none.csv", image_size=16)
    (tmp_path / "bad.csv").write_text("path\nnowhere/x.png\n")
    with pytest.raises(
        FileNotFoundError, match=r"bad\.csv names 'nowhere/x\.png', but .* does not exist"
    ):
        ImageFiles(tmp_path / "bad.csv", image_size=16)


def test_thumbnail_and_path(emoji, fmnist):
    root, _, _ = emoji
    files = ImageFiles(root, image_size=16)
    thumb = files.thumbnail(3, size=20)
    assert max(thumb.size) <= 20 and thumb.mode == "RGB"
    assert files.path(3) == root / "emoji_0003.png" and files.path(3).is_file()
    froot, _ = fmnist
    gray = ImageFiles(froot, image_size=28)
    bad = gray.keys.index("7_sneaker/notes.png")
    with pytest.raises(ImageDecodeError, match=r"notes\.png: not a readable image"):
        gray.thumbnail(bad)


def test_bad_input_names_the_argument(tmp_path, emoji):
    with pytest.raises(DataNotFoundError, match="root="):
        ImageFiles(tmp_path / "nowhere", image_size=16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty: no class folders and no images"):
        ImageFiles(tmp_path / "empty", image_size=16)
    root, _, _ = emoji
    with pytest.raises(ValueError, match=r"image_size must be an int >= 2.*got 0"):
        ImageFiles(root, image_size=0)
    with pytest.raises(
        ValueError, match=r"emoji_0000\.png is a file; pass a folder of images .* or a \.csv"
    ):
        ImageFiles(root / "emoji_0000.png", image_size=8)
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(root / "emoji_0000.png", one / "a.png")
    with pytest.raises(
        ValueError, match=r"split='test' of .* holds no files.*change test_fraction"
    ):
        ImageFiles(one, image_size=8, split="test", test_fraction=0.01)
    with pytest.raises(ValueError, match="crop must be one of"):
        ImageFiles(root, image_size=8, crop="middle")
    with pytest.raises(ValueError, match="label_column='kind' applies to a CSV/Parquet manifest"):
        ImageFiles(root, image_size=8, label_column="kind")
    mixed = tmp_path / "mixed"
    (mixed / "cats").mkdir(parents=True)
    shutil.copy(root / "emoji_0000.png", mixed / "cats/a.png")
    shutil.copy(root / "emoji_0001.png", mixed / "loose.png")
    with pytest.raises(ValueError, match=r"1 images .*'loose\.png'.* beside class folders"):
        ImageFiles(mixed, image_size=8)
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        image_folder_loader(ImageFiles(root, image_size=8), [[0]], workers=-1)
    with pytest.raises(TypeError, match="dataset must be an ImageFiles"):
        image_folder_loader([1, 2], [[0]])  # type: ignore[arg-type]


def test_load_image_folder_reads_flat_folders_too(emoji):
    root, images, _ = emoji
    ds = load_image_folder(root)
    assert ds.images.shape == (80, 3, 32, 32) and torch.equal(ds.images, images)
    assert ds.labels.eq(-1).all() and ds.classes == []


def test_a_views_step_from_a_folder_of_rgb_images(emoji):
    """The pieces compose as a views run would: folder -> loader -> RGB views -> ResNet -> loss."""
    from contrastkit.data import SimCLRViews
    from contrastkit.encoders import create_encoder
    from contrastkit.losses import create_loss

    root, _, _ = emoji
    files = ImageFiles(root, image_size=24, split="train", test_fraction=0.2)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(files), generator=g)[:32]
    batch = next(iter(image_folder_loader(files, [order.tolist()], workers=0)))
    views = SimCLRViews(size=24, channels=files.channels)
    v = views(batch["images"], n_views=2, generator=g)  # (2, B, 3, 24, 24) from uint8
    torch.manual_seed(0)
    net = create_encoder("resnet18", in_channels=files.channels, image_size=24, width=8,
                         projection_dim=16)  # fmt: skip
    z = net(v.flatten(0, 1))  # (2B, 16)
    loss = create_loss("nt_xent")(*z.chunk(2))
    loss.backward()
    assert net.stem_kind == "cifar" and torch.isfinite(loss)
    assert all(p.grad is not None for p in net.parameters())

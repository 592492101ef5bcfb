"""Model files as untrusted input (anomvae.persistence): limits checked
before anything is decompressed or allocated, and every damaged file one
ModelFileError naming the file and the field, through anomvae.load,
load_for_scoring and the command line alike."""

import io
import json
import math
import os
import subprocess
import sys
import threading
import zipfile

import pandas as pd
import pytest
import torch
from conftest import TRAIN, assert_input_error, invoke, quiet_fit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anomvae
from anomvae import VAEAnomalyDetector, persistence
from anomvae.errors import ModelFileError
from anomvae.persistence import load_for_scoring, read_metadata

LOADERS = [read_metadata, anomvae.load, load_for_scoring]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """The metadata and raw weights of a model of the cardio example rows."""
    model = tmp_path_factory.mktemp("model") / "cardio.anomvae"
    frame = pd.read_csv(TRAIN).drop(columns="record_id")
    anomvae.save(quiet_fit(VAEAnomalyDetector(max_epochs=3, random_state=0), frame), model,
                 extra={"id_columns": ["record_id"]})
    with zipfile.ZipFile(model) as archive:
        return json.loads(archive.read("anomvae.json")), archive.read("weights.pt")


def write_model(path, metadata, weights, *, raw_metadata=None, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr("anomvae.json", raw_metadata if raw_metadata is not None else json.dumps(metadata))
        archive.writestr("weights.pt", weights)
    return path


def edited(parts, path, edit):
    metadata = json.loads(json.dumps(parts[0]))
    edit(metadata)
    return write_model(path, metadata, parts[1])


def tensors(parts, edit):
    weights = torch.load(io.BytesIO(parts[1]), weights_only=True)
    edit(weights)
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    return buffer.getvalue()


def assert_refused(path, *fragments, loaders=LOADERS, command=("info",)):
    """Every loader and the command line refuse ``path`` in one line naming
    it (``anomvae info`` reads only the metadata; ``score`` loads the model
    for scoring, which reads no training parameter but ``score_bound``)."""
    for loader in loaders:
        with pytest.raises(ModelFileError) as caught:
            loader(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 600, message
        for fragment in fragments:
            assert fragment in message, message
    if command:
        assert_input_error(invoke(*command, path, *(() if command == ("info",) else (TRAIN, "-o", "-"))),
                           str(path), *fragments)


# ------------------------------------------------------ the zip container


def bomb(path, parts, member, size=1 << 30):
    """A model file whose ``member`` decompresses to ``size`` bytes from a
    few megabytes: the real member followed by whitespace (valid JSON) or
    zeros."""
    metadata, weights = parts
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, content in (("anomvae.json", json.dumps(metadata).encode()), ("weights.pt", weights)):
            with archive.open(name, "w", force_zip64=True) as handle:
                handle.write(content)
                if name == member:
                    chunk = (b" " if name == "anomvae.json" else b"\0") * (1 << 24)
                    for _ in range(size >> 24):
                        handle.write(chunk)
    return path


def dense(path, parts):
    """A model file whose metadata is just under the size limit, all short
    numbers (what costs the most memory per byte once the number of
    containers and strings is limited), stored uncompressed."""
    text = json.dumps(parts[0])
    room = persistence.MAX_METADATA_BYTES - len(text) - 20
    text = text[:-1] + ', "zz": [' + ",".join(["1.5"] * (room // 4)) + "]}"
    return write_model(path, None, parts[1], raw_metadata=text, compression=zipfile.ZIP_STORED)


@pytest.fixture(scope="module")
def bombs(parts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    files = {member: bomb(folder / f"{member}.anomvae", parts, member) for member in ("anomvae.json", "weights.pt")}
    files["dense"] = dense(folder / "dense.anomvae", parts)
    return files


@pytest.mark.parametrize("member", ["anomvae.json", "weights.pt"])
def test_a_zip_bomb_is_refused_before_it_is_decompressed(bombs, member):
    assert os.path.getsize(bombs[member]) < 8 << 20
    assert_refused(bombs[member], f"'{member}' would decompress", loaders=[anomvae.load])


@pytest.mark.parametrize("member", ["anomvae.json", "weights.pt", "dense"])
@pytest.mark.parametrize("command", ["info", "score"])
def test_the_command_stays_within_512_mb_on_a_zip_bomb(bombs, member, command, tmp_path):
    # RLIMIT_DATA bounds the heap and private mappings; without the limits
    # the 1 GiB member alone would exceed it. The dense file is within the
    # limits, so it loads (its extra entry is ignored), within the memory.
    limit = 512 << 20
    args = [bombs[member]] + ([TRAIN, "-o", tmp_path / "out.csv"] if command == "score" else [])
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_DATA, ({limit}, {limit}))\n"
        "from anomvae.cli import main\n"
        f"main({[command, *map(str, args)]!r})\n"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    if member == "dense":
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("Error: ") and "would decompress" in result.stderr, result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_sizes_over_the_limits_are_refused_whatever_the_ratio(parts, tmp_path, monkeypatch):
    monkeypatch.setattr(persistence, "MAX_METADATA_BYTES", 1000)
    path = write_model(tmp_path / "big.anomvae", *parts, compression=zipfile.ZIP_STORED)
    assert_refused(path, "'anomvae.json' would decompress to", "the limit is 1000", loaders=[anomvae.load])


def test_save_refuses_a_model_load_would_refuse(tmp_path, monkeypatch):
    detector = quiet_fit(VAEAnomalyDetector(max_epochs=1, random_state=0), pd.read_csv(TRAIN).drop(columns="record_id"))
    monkeypatch.setattr(persistence, "MAX_WEIGHTS_BYTES", 1000)
    with pytest.raises(ValueError, match="weights.pt would take .* bytes, over the model-file limit of 1000"):
        anomvae.save(detector, tmp_path / "m.anomvae")
    assert not (tmp_path / "m.anomvae").exists()


def test_too_many_or_repeated_members_are_refused(parts, tmp_path):
    many = write_model(tmp_path / "many.anomvae", *parts)
    with zipfile.ZipFile(many, "a") as archive:
        for i in range(persistence.MAX_MEMBERS):
            archive.writestr(f"junk{i}", b"")
    assert_refused(many, "zip members; a model file has at most 16")
    twice = write_model(tmp_path / "twice.anomvae", *parts)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(twice, "a") as archive:
        archive.writestr("anomvae.json", b"{}")
    assert_refused(twice, "appears twice")


def _flag_encrypted(path):
    # Set bit 0 (encrypted) of the general-purpose flags in both headers.
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = data.find(signature)
        data[start + offset] |= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (_flag_encrypted, "'anomvae.json' is encrypted"),
    (None, "uses zip compression method 12"),
])
def test_encrypted_and_unknown_compression_members_are_refused(parts, tmp_path, damage, message):
    path = tmp_path / "odd.anomvae"
    if damage is None:
        write_model(path, *parts, compression=zipfile.ZIP_BZIP2)
    else:
        damage(write_model(path, *parts))
    assert_refused(path, message)


def test_a_named_pipe_is_refused_at_once(tmp_path):
    fifo = tmp_path / "model.anomvae"
    os.mkfifo(fifo)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_error_of(anomvae.load, fifo)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # unblock the reader before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("loading a named pipe blocked")
    assert "not a regular file" in outcome[0]
    assert_input_error(invoke("info", fifo), "not a regular file")


def _error_of(function, *args):
    try:
        function(*args)
    except ModelFileError as exc:
        return str(exc)
    return "loaded"


# ------------------------------------------------------- the JSON metadata


@pytest.mark.parametrize("content, message", [
    ("[" + "{}," * 200_000 + "{}]", "lists or mappings; at most 100000"),
    ("[" + '"ab",' * 1_100_000 + '"ab"]', "strings; at most 1000000"),
    ("1" * 5000, "not valid JSON: Exceeds the limit"),
])
def test_metadata_that_would_cost_far_more_memory_than_bytes_is_refused(parts, tmp_path, content, message):
    # Once a 1 MB file made info use 2.4 GB: each {} or short string costs
    # tens of bytes once parsed.
    text = json.dumps(parts[0])[:-1] + ', "zz": ' + content + "}"
    # Stored: no compression ratio to give it away.
    path = write_model(tmp_path / "many.anomvae", None, parts[1], raw_metadata=text, compression=zipfile.ZIP_STORED)
    assert_refused(path, message)


@pytest.mark.parametrize("depth", [40, 90_000])
def test_deeply_nested_json_is_refused(parts, tmp_path, depth):
    text = json.dumps(parts[0])[:-1] + ', "extra2": ' + "[" * depth + "]" * depth + "}"
    path = write_model(tmp_path / "deep.anomvae", None, parts[1], raw_metadata=text)
    assert_refused(path, "nests deeper than 16 levels")


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.update(threshold_="abc"), "fitted.threshold_: 'abc' is not a finite number"),
    (lambda f: f.update(threshold_=math.nan), "fitted.threshold_: nan is not a finite number"),
    (lambda f: f.update(offset_=math.inf), "fitted.offset_: inf is not a finite number"),
    (lambda f: f.update(threshold_=1e400), "fitted.threshold_: inf is not a finite number"),
    (lambda f: f["scale_"].__setitem__(3, -1.0), "fitted.scale_: -1.0 at position 3 is not a positive finite"),
    (lambda f: f["scale_"].__setitem__(0, math.nan), "fitted.scale_: nan at position 0"),
    (lambda f: f["center_"].__setitem__(2, "x" * 10**6), "characters as text) is not a list of numbers"),
    (lambda f: f.update(reference_scores_=[1.0, math.inf]), "fitted.reference_scores_: inf at position 1"),
    (lambda f: f.update(training_scores_=[math.nan]), "fitted.training_scores_: nan at position 0"),
    (lambda f: f.update(calibration_fpr_=2), "fitted.calibration_fpr_: 2 is not a rate"),
    (lambda f: f.update(n_features_in_="21"), "fitted.n_features_in_: '21' is not an integer"),
    (lambda f: f.update(n_epochs_=True), "fitted.n_epochs_: True is not an integer"),
    (lambda f: f.update(device_="meta"), "fitted.device_: 'meta' is not cpu, cuda"),
    (lambda f: f.update(reference_scores_=[], calibration_fpr_=0.1), "reference_scores_: [] is not a list of one"),
    (lambda f: f.update(feature_names_in_=[1] * 21), "fitted.feature_names_in_: [1, 1"),
    (lambda f: f.update(history_=[1, 2]), "fitted.history_: [1, 2] is not a mapping"),
    (lambda f: f["history_"].update(train_loss="x"), "fitted.history_: train_loss 'x' is not a list"),
    (lambda f: f.pop("latent_dim_"), "fitted.latent_dim_ is missing"),
    (lambda f: f.update(latent_dim_=f["latent_dim_"] + 1), "latent_dim_ or image_shape_ differs"),
    (lambda f: f.update(threshold_=f["threshold_"] + 1), "offset_ "),
    (lambda f: f["module_config"].update(hidden_dims=[30_000_000]), "hidden_dims width must be an integer from 1"),
    (lambda f: f["module_config"].update(hidden_dims=[8] * 100_000), "hidden_dims has 100000 layers"),
    (lambda f: f["module_config"].update(hidden_dims="abc"), "hidden_dims 'abc' is not a list of ints"),
    (lambda f: f["module_config"].update(n_features=1e400), "n_features inf is not int"),
    (lambda f: f["module_config"].update(n_score_samples=10**9), "n_score_samples must be an integer from 1"),
    (lambda f: f["module_config"].update(likelihood="poisson"), "likelihood 'poisson' is not one of"),
    (lambda f: f["module_config"].update(depth=3), "unknown entries ['depth']"),
])
def test_damaged_fitted_values_are_refused_naming_the_field(parts, tmp_path, edit, message):
    assert_refused(edited(parts, tmp_path / "bad.anomvae", lambda m: edit(m["fitted"])), message)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(extra=[1]), "extra [1] is not a mapping"),
    (lambda m: m["extra"].update(id_columns="record_id"), "extra.id_columns 'record_id' is not a list"),
    (lambda m: m["extra"].update(input="video"), "extra.input 'video' is not csv or images"),
])
def test_damaged_extra_sections_are_refused(parts, tmp_path, edit, message):
    assert_refused(edited(parts, tmp_path / "bad.anomvae", edit), message)


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(hidden_dims="abc"), "params: The 'hidden_dims' parameter"),
    (lambda p: p.update(lr="fast"), "params: The 'lr' parameter"),
    (lambda p: p.update(surprise=1), "params has unknown entries ['surprise']"),
])
def test_damaged_parameters_are_refused_by_load(parts, tmp_path, edit, message):
    path = edited(parts, tmp_path / "bad.anomvae", lambda m: edit(m["params"]))
    assert_refused(path, message, loaders=[anomvae.load], command=None)
    load_for_scoring(path)  # scoring reads no training parameter but score_bound


def test_a_bad_score_bound_is_refused_for_scoring_too(parts, tmp_path):
    path = edited(parts, tmp_path / "bad.anomvae", lambda m: m["params"].update(score_bound=3))
    assert_refused(path, "score_bound", "3", loaders=[load_for_scoring, anomvae.load], command=("score",))


def test_a_nan_threshold_never_reaches_scoring(parts, tmp_path):
    # Once it scored "0 anomalies" on the command line and flagged every row from Python.
    path = edited(parts, tmp_path / "nan.anomvae", lambda m: m["fitted"].update(threshold_=math.nan,
                                                                               offset_=math.nan))
    result = invoke("score", path, TRAIN, "-o", tmp_path / "out.csv")
    assert_input_error(result, "fitted.offset_: nan is not a finite number")
    assert not (tmp_path / "out.csv").exists()


# ------------------------------------------------------------ the weights


@pytest.mark.parametrize("edit, message", [
    (lambda w: w.__setitem__("encoder.mu.bias", w["encoder.mu.bias"] * math.nan),
     "weights.pt's encoder.mu.bias holds NaN or infinite values"),
    (lambda w: w.__setitem__("encoder.mu.bias", torch.zeros(3000)),
     "encoder.mu.bias has shape [3000], but module_config's network needs"),
    (lambda w: w.pop("encoder.mu.weight"), "weights.pt lacks the tensor 'encoder.mu.weight'"),
    (lambda w: w.__setitem__("extra.weight", torch.zeros(2)), "module_config's network has no tensor 'extra.weight'"),
    (lambda w: w.__setitem__("encoder.mu.bias", torch.zeros(2, dtype=torch.int64)), "contiguous float32 tensors"),
    # Finite as float64, infinite once cast to the network's float32.
    (lambda w: w.update({k: v.double() * 1e300 for k, v in w.items()}), "contiguous float32 tensors"),
    # One stored number posing as a whole tensor.
    (lambda w: w.__setitem__("encoder.mu.bias", torch.zeros(1).expand(w["encoder.mu.bias"].shape)),
     "contiguous float32 tensors"),
])
def test_weights_that_are_not_the_described_network_are_refused(parts, tmp_path, edit, message):
    path = write_model(tmp_path / "bad.anomvae", parts[0], tensors(parts, edit))
    assert_refused(path, message, loaders=[anomvae.load, load_for_scoring], command=("score",))


def test_a_network_larger_than_its_weights_is_refused_before_they_are_read(parts, tmp_path, monkeypatch):
    # 20000x20000 layers stored as expanded views of one number: a 14 KB file
    # that once took 3.5 GB to load.
    def expanded(weights):
        for name, tensor in list(weights.items()):
            weights[name] = torch.zeros(1).expand(*shapes[name])

    metadata = json.loads(json.dumps(parts[0]))
    metadata["fitted"]["module_config"]["hidden_dims"] = [20_000, 20_000]
    from anomvae.config import NetworkConfig
    from anomvae.model import state_shapes

    shapes = state_shapes(NetworkConfig.from_dict(metadata["fitted"]["module_config"]))
    weights = torch.load(io.BytesIO(parts[1]), weights_only=True)
    weights = {name: torch.zeros(1) for name in shapes}
    expanded(weights)
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    path = write_model(tmp_path / "views.anomvae", metadata, buffer.getvalue())
    read = []
    monkeypatch.setattr(persistence, "_read_member", lambda archive, path, name: read.append(name) or
                        archive.read(name))
    assert_refused(path, "describes a network of 3204880368 bytes of weights, but weights.pt holds",
                   loaders=[anomvae.load], command=None)
    assert read == ["anomvae.json"]


def test_a_huge_described_network_is_refused_before_it_is_built(parts, tmp_path, monkeypatch):
    # Within the bounds, but not what the weights hold: nothing is allocated.
    path = edited(parts, tmp_path / "wide.anomvae", lambda m: m["fitted"]["module_config"].update(
        hidden_dims=[65_536, 65_536]))
    built = []
    monkeypatch.setattr("anomvae.fitted.build_vae", lambda config: built.append(config))
    assert_refused(path, "describes a network of", loaders=[anomvae.load], command=("score",))
    assert not built


# ------------------------------------------------------------ fuzzing


def _json_values():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
    return st.recursive(scalars, lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)), max_leaves=12)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value[:3]):
            yield from _paths(child, (*prefix, i))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_metadata_edit_loads_or_is_one_model_file_error(parts, tmp_path, data):
    metadata = json.loads(json.dumps(parts[0]))
    paths = list(_paths(metadata))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        replacement = data.draw(_json_values())
        if not path:
            metadata = replacement
            continue
        parent = metadata
        try:
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = replacement
        except (KeyError, IndexError, TypeError):
            pass  # an earlier edit removed this path
    file = write_model(tmp_path / "fuzz.anomvae", None, parts[1], raw_metadata=json.dumps(metadata))
    # (Memory is bounded by the RLIMIT_DATA tests above; a timed assert here would be a timed test.)
    for loader in (anomvae.load, load_for_scoring):
        try:
            loader(file)
        except ModelFileError as exc:
            assert str(exc).startswith(f"{file}: ") and "\n" not in str(exc) and len(str(exc)) < 600


def test_a_model_trained_on_a_numbered_cpu_loads(parts, tmp_path):
    # fit accepts device="cpu:0"; the file it writes must load.
    path = edited(parts, tmp_path / "cpu0.anomvae", lambda m: m["fitted"].update(device_="cpu:0"))
    assert load_for_scoring(path).device_ == "cpu:0"


def test_checking_the_weights_imports_no_compiler(parts, tmp_path):
    # Element-wise operations on torch's meta device import torch._dynamo
    # (most of a second at every start of anomvae score).
    path = write_model(tmp_path / "m.anomvae", *parts)
    code = f"import sys, anomvae; anomvae.load({str(path)!r}); print('torch._dynamo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"

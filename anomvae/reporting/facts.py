"""The model section of a report: what the model is and how its threshold was set."""

from dataclasses import dataclass

from ..latent import is_collapsed


@dataclass(frozen=True)
class Fact:
    """One line of the model table: ``key`` names it in the HTML (its
    ``id``), ``value`` is the number a program reads (its ``data-value``;
    None for text)."""

    key: str
    label: str
    text: str
    value: object = None


# Feature names listed before "and N more": a table of hundreds says nothing.
MAX_FEATURES_SHOWN = 40


def model_facts(model, metadata=None, path=None, threshold=None):
    """The facts of the model section, in order.

    Parameters
    ----------
    model : VAEAnomalyDetector
    metadata : dict, default=None
        The model file's (:func:`~anomvae.persistence.read_metadata`), for
        its version, creation time and training data.
    path : str, default=None
        The model file.
    threshold : float, default=None
        A threshold given instead of the model's.

    Returns
    -------
    list of Fact
    """
    metadata = metadata or {}
    params = model.get_params()
    facts = [Fact("model-file", "model", str(path) if path else "(in memory)")]
    if metadata:
        facts.append(Fact("model-version", "written by",
                          f"anomvae {metadata.get('anomvae_version')}, format {metadata.get('format_version')}, "
                          f"created {metadata.get('created')}"))
    facts += [_features(model), _network(model, params), _latent(model)]
    facts += _threshold(model, params, threshold)
    facts.append(_training(model, params, metadata.get("extra", {}).get("training", {})))
    return facts


def _features(model):
    shape = getattr(model, "image_shape_", None)
    if shape is not None:
        channels, height, width = shape
        colour = {1: "grayscale", 3: "RGB"}.get(channels, f"{channels} channels")
        return Fact("features", "input", f"images of {height}x{width} pixels, {colour} "
                    f"({model.n_features_in_} values)", model.n_features_in_)
    names = getattr(model, "feature_names_in_", None)
    names = [str(n) for n in names] if names is not None else [f"x{j}" for j in range(model.n_features_in_)]
    shown = ", ".join(names[:MAX_FEATURES_SHOWN])
    more = f", and {len(names) - MAX_FEATURES_SHOWN} more" if len(names) > MAX_FEATURES_SHOWN else ""
    return Fact("features", "features", f"{len(names)}: {shown}{more}", len(names))


def _network(model, params):
    layers = "" if params["architecture"] == "conv" else f", hidden {', '.join(map(str, params['hidden_dims']))}"
    return Fact("network", "network",
                f"{params['architecture']}{layers}, {params['likelihood']} likelihood; scores: "
                f"{params['score_bound']} over {params['n_score_samples']} fixed latent draws per row")


def _latent(model):
    active, kl = getattr(model, "active_units_", None), getattr(model, "kl_per_dim_", None)
    use = "units in use not recorded (the file predates it)" if active is None or kl is None else \
        f"{active} of {len(kl)} units active" + (" (posterior collapse)" if is_collapsed(active, len(kl)) else "")
    return Fact("latent", "latent", f"{model.latent_dim_} dimensions; {use}", model.latent_dim_)


def _threshold(model, params, threshold):
    """The threshold in use, and the rule that set it."""
    fpr, reference = getattr(model, "calibration_fpr_", None), getattr(model, "reference_scores_", None)
    if reference is not None:
        how = (f"calibrated on {len(reference):,} reference rows for a false-alarm rate of {fpr:g} "
               "(split-conformal; p-values against those rows)")
    elif params["contamination"] == "auto":
        how = "Tukey's fence on the training scores (contamination=auto): Q3 + 1.5 IQR; not calibrated"
    else:
        how = f"the top {params['contamination']:g} of the training scores (contamination); not calibrated"
    used = model.threshold_ if threshold is None else threshold
    facts = [Fact("threshold", "threshold", f"{used:.6g} nats (anomaly score = negative ELBO)", used),
             Fact("threshold-rule", "set by", how if threshold is None else
                  f"given for this report; the model's is {model.threshold_:.6g} nats ({how})")]
    if fpr is not None:
        facts.append(Fact("calibration-fpr", "calibration rate", f"{fpr:g}", fpr))
    return facts


def _training(model, params, training):
    rows = training.get("rows")
    source = f"{rows:,} rows of {training.get('file', '?')}; " if isinstance(rows, int) else ""
    monitored = "validation share {:g}".format(params["validation_fraction"]) if params["validation_fraction"] \
        else "no validation rows"
    # Not id "training": that is the Training section's.
    return Fact("training-run", "training",
                f"{source}{model.n_epochs_} epochs (best {model.best_epoch_}), KL warm-up {params['kl_warmup']} "
                f"epochs to beta {params['beta']:g}, {monitored}, batch size {model.batch_size_}, "
                f"on {model.device_}", model.n_epochs_)

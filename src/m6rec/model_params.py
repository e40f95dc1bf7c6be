"""The model stages' params: one frozen dataclass per section of params.yaml (``baselines``, ``blend``,
``pretrain``, ``multitask``, ``finetune``, ``seqrec``, and the shared ``train`` settings of a history model).

Read with :func:`m6rec.config.section` / :func:`m6rec.config.load_section`, which check every key and type; the data,
evaluation and operations sections are in :mod:`m6rec.config`. A stage imports only the sections it reads, so DVC
reruns it only when one of them changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from m6rec.config import ConfigError

FINETUNE_MODES = ("zero_shot", "efficient", "full", "scratch")
TARGET_ITEMS = ("text", "pretrained")


@dataclass(frozen=True)
class BaselinesParams:
    in_dir: str = "data/validated"  # canonical data that passed the checks
    out_dir: str = "models/baselines"  # per-domain model files
    metrics: str = "metrics/baselines.json"  # {domain: {model: {valid, test}}}
    plot: str = "plots/baselines.json"  # test NDCG@10 by domain/model (dvc plots)
    bundle: str = "models/baselines/bundle"  # BPR-MF serving bundle (a promotion candidate)
    bundles: str = "models/baselines/bundles"  # one serving bundle per ranking baseline: <bundles>/<model>/
    domains: tuple[str, ...] = ()  # () = every prepared domain
    models: tuple[str, ...] = ("mostpop", "itemknn", "puresvd", "gfcf", "bprmf", "ease", "als")  # which baselines
    itemknn_neighbours: int = 100  # neighbours kept per item
    itemknn_shrink: float = 10.0  # similarity shrinkage
    svd_dim: int = 64  # PureSVD rank
    gfcf_k: int = 64  # GF-CF ideal low-pass rank
    gfcf_alpha: float = 0.3  # GF-CF weight of the ideal low-pass term
    mf_dim: int = 64  # BPR-MF embedding size
    mf_epochs: int = 40  # BPR-MF max epochs
    mf_batch: int = 4096  # BPR-MF batch size (edges)
    mf_lr: float = 0.005  # Adam learning rate
    mf_reg: float = 1e-4  # L2 weight on the batch's embeddings
    mf_eval_every: int = 5  # validate every N epochs (early stopping)
    mf_patience: int = 2  # checks without improvement before stopping
    als_dim: int = 16  # BiasedALS factors (explicit domains only)
    als_reg: float = 10.0  # BiasedALS ridge penalty
    als_iterations: int = 10  # BiasedALS alternations
    ease_lambdas: tuple[float, ...] = (100.0, 250.0, 500.0, 1000.0)  # EASE ridge grid (best on validation)
    ease_max_items: int = 20000  # EASE refuses more active items (dense item x item matrices)
    seed: int = 42


@dataclass(frozen=True)
class BlendParams:
    in_dir: str = "data/validated"  # canonical data (validation fits the weights, test reports)
    bundles: tuple[str, ...] = ("models/baselines/bundles", "models/pretrain/bundle", "models/multitask/bundle",
                                "models/finetune/bundle")  # candidate bundles, or folders of bundles
    bundle: str = "models/blend/bundle"  # the blend's serving bundle
    metrics: str = "metrics/blend.json"  # {domain: {model: {valid, test}}} (components and blend)
    domains: tuple[str, ...] = ()  # () = every domain of the candidate bundles that the data has
    max_components: int = 3  # blend the best N candidates (by validation metric) of each domain
    step: float = 0.1  # simplex grid step of the weights
    metric: str = "ndcg@20"  # validation metric the weights maximise
    folds: int = 10  # seeded folds of the validation users for the cross-fitted acceptance of a mixture
    min_z: float = 2.0  # a mixture is kept only if its held-out gain over the best single is >= min_z std errors
    seed: int = 42  # fold assignment

    def __post_init__(self) -> None:
        if self.folds < 0:
            raise ConfigError(f"blend.folds must be >= 0 (0 or 1: no acceptance test), got {self.folds}")
        if not 0 < self.step <= 1:
            raise ConfigError(f"blend.step must be in (0, 1], got {self.step}")
        if self.max_components < 1:
            raise ConfigError(f"blend.max_components must be >= 1, got {self.max_components}")


@dataclass(frozen=True)
class PretrainParams:
    in_dir: str = "data/validated"  # canonical data (evaluation splits, cold-start items)
    graph_dir: str = "data/graph"  # output of the graph stage
    embeddings_dir: str = "data/embeddings"  # output of the text_embeddings stage
    out_dir: str = "models/pretrain"  # model.pt
    metrics: str = "metrics/pretrain.json"  # {domain: {lightgcn: {valid, test, cold}}}
    plot: str = "plots/pretrain.json"  # per-epoch loss and validation metric
    bundle: str = "models/pretrain/bundle"  # serving bundle (a candidate for the champion gate)
    use_text: bool = True  # item input = id embedding + projection of its text vector (False: plain LightGCN)
    embedding_dim: int = 64  # size of every embedding
    num_layers: int = 3  # LightGCN propagation layers
    propagation: str = "symmetric"  # symmetric (fast custom backward) | lgconv (torch-geometric LGConv)
    epochs: int = 30  # maximum epochs (one epoch = every training edge once)
    batch_size: int = 65536  # edges per batch; each batch costs one full propagation, so batches are large
    lr: float = 0.03  # Adam learning rate (tuned for the large batch)
    reg: float = 1e-4  # L2 weight on the batch's input embeddings
    id_dropout: float = 0.0  # training: chance an item with text is represented by its text alone (cold-start drill)
    init_std: float = 0.1  # std of the id embeddings' initialisation
    eval_every: int = 5  # validate every N epochs
    patience: int = 2  # validations without improvement before stopping
    seed: int = 42  # torch and sampler seed


@dataclass(frozen=True)
class TrainParams:
    """`multitask.train` / `finetune.train`: how a history model is trained (m6rec.training.history)."""

    examples_per_user: int = 20  # (history -> next item) examples drawn per user and epoch
    negatives: int = 256  # shared uniform retrieval negatives per batch
    batch_size: int = 512  # examples per batch (one domain per batch)
    epochs: int = 4  # maximum epochs (early stopping restores the best)
    lr: float = 0.003  # Adam learning rate
    weight_decay: float = 0.0  # Adam L2 penalty
    eval_every: int = 1  # validate every N epochs (early stopping on protocol.select_metric)
    patience: int = 2  # validations without improvement before stopping
    valid_users: int = 1000  # users per domain sampled for early-stopping validation (0 = all)
    like_threshold: float = 4.0  # explicit domains: a rating >= this is a like (like task and AUC)
    seed: int = 42  # sampling and validation-subset seed


@dataclass(frozen=True)
class MultitaskParams:
    in_dir: str = "data/validated"  # canonical data that passed the checks
    pretrain_dir: str = "models/pretrain"  # pretrained LightGCN checkpoint (model.pt)
    graph_dir: str = "data/graph"  # the graph the checkpoint was trained on (to propagate item vectors once)
    out_dir: str = "models/multitask"  # model.pt of `save_variant`
    metrics: str = "metrics/multitask.json"  # {domain: {variant: {valid, test, fit_s}}}
    plot: str = "plots/multitask.json"  # test NDCG@20 per domain/variant
    explanations: str = "reports/explanations.md"  # top recommendations with the history items attention credits
    bundle: str = "models/multitask/bundle"  # serving bundle of `save_variant` (history scorer; finetune extends it)
    domains: tuple[str, ...] = ()  # training domains; () = every source domain of the pretrained model
    variants: tuple[str, ...] = ("attention_mt", "attention_st", "mean_mt", "mean_st")  # pooling x multi-task
    save_variant: str = "attention_mt"  # the variant saved for fine-tuning and explained
    # parameter groups trained (m6rec.models.multitask.GROUPS); the per-item residuals are left out by default:
    # free per-item vectors overfit the next-item objective within an epoch and undo the pretraining
    train_groups: tuple[str, ...] = ("encoder", "heads", "adapters", "text_projection")
    max_len: int = 50  # history items kept per user (most recent)
    n_interests: int = 4  # K focused interest vectors of the attention pooling (plus one uniform interest)
    hidden: int = 64  # attention key size and task-tower width
    use_position: bool = True  # learn a recency bias per domain and interest (attention pooling)
    recency_init: float = 5.0  # slope of the recency prior: the oldest column starts at -this, the newest at 0
    gate_scale: float = 5.0  # initial sharpness of the target attention over interests (learned)
    w_retrieval: float = 1.0  # task weight of the sampled-softmax retrieval loss
    w_rating: float = 0.5  # task weight of the rating MSE (explicit domains)
    w_like: float = 0.5  # task weight of the like BCE
    temperature: float = 1.0  # initial retrieval softmax temperature (learned); 1 suits pretrained dot products
    explain_users: int = 3  # users per domain in the explanations report
    explain_top: int = 3  # recommendations per user, and history items shown per recommendation
    seed: int = 42  # model initialisation seed
    train: TrainParams = TrainParams(examples_per_user=5, epochs=3, valid_users=500)


@dataclass(frozen=True)
class FinetuneParams:
    in_dir: str = "data/validated"  # canonical data that passed the checks
    pretrain_dir: str = "models/pretrain"  # pretrained LightGCN checkpoint (item text vectors, base vectors)
    graph_dir: str = "data/graph"  # its graph (to propagate the pretrained item vectors)
    embeddings_dir: str = "data/embeddings"  # item sentence vectors of targets the pretraining never saw
    multitask_dir: str = "models/multitask"  # multi-task checkpoint: the starting point
    out_dir: str = "models/finetune"  # <domain>/model.pt of `save_mode` at the largest fraction
    source_bundle: str = "models/multitask/bundle"  # the multi-task model's serving bundle ("" = targets only)
    bundle: str = "models/finetune/bundle"  # source_bundle's domains + the fine-tuned targets ("" = none)
    metrics: str = "metrics/finetune.json"  # {domain: {zero_shot | <mode>@<fraction>: {valid, test, ...}}}
    plot: str = "plots/finetune.json"  # test NDCG@10 per fraction; columns "<domain>/<mode>"
    domains: tuple[str, ...] = ("ml-100k",)  # target domains (must not be multitask training domains)
    fractions: tuple[float, ...] = (0.1, 0.5, 1.0)  # shares of the target's training users (nested, seeded)
    modes: tuple[str, ...] = FINETUNE_MODES  # zero_shot, efficient, full, scratch
    target_items: str = "text"  # text: target items by text projection only | pretrained: pretrained vectors
    save_mode: str = "full"  # mode whose model is saved (at the largest fraction)
    residual_std: float = 0.1  # scratch: std of the item residuals' initialisation
    seed: int = 42  # user subsets and initialisation
    train: TrainParams = TrainParams(epochs=5)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.modes) - set(FINETUNE_MODES))
        if unknown:
            raise ConfigError(f"params.yaml finetune.modes: unknown {unknown}; modes: {list(FINETUNE_MODES)}")
        if self.target_items not in TARGET_ITEMS:
            raise ConfigError(f"params.yaml finetune.target_items must be one of {TARGET_ITEMS}, "
                              f"got {self.target_items!r}")
        bad = [f for f in self.fractions if not 0 < f <= 1]
        if bad or not self.fractions:
            raise ConfigError(f"params.yaml finetune.fractions must be in (0, 1], got {list(self.fractions)}")


@dataclass(frozen=True)
class SeqRecParams:
    """`seqrec`: the universal text-based sequence model (m6rec.models.seqrec), pretrained once on `sources` and
    served on every domain with item text (zero-shot on the domains it never trained on)."""

    in_dir: str = "data/validated"  # canonical data that passed the checks
    embeddings_dir: str = "data/embeddings"  # output of the text_embeddings stage (the items' sentence vectors)
    out_dir: str = "models/seqrec"  # model.pt: the pretrained model, reused while its fingerprint is unchanged
    bundle: str = "models/seqrec/bundle"  # serving bundle: every served domain (a candidate for the champion gate)
    metrics: str = "metrics/seqrec.json"  # {domain: {seqrec | seqrec_zero_shot: {valid, test, cold, mode, ...}}}
    domains: tuple[str, ...] = ()  # served domains (resolved: every declared domain; those without text skipped)
    sources: tuple[str, ...] = ()  # pretraining sources; () = the pretrain-role domains that are not finetune targets
    finetune: tuple[str, ...] = ()  # () = the finetune-role domains: also fine-tuned in `finetune_mode`
    finetune_mode: str = "full"  # efficient | full (m6rec.models.seqrec.MODE_GROUPS)
    calibrate: bool = True  # label-free re-weighting of a zero-shot domain's score terms on its observed histories
    dim: int = 64  # width of the adaptor and the encoder
    layers: int = 2  # causal self-attention blocks
    heads: int = 2  # attention heads
    max_len: int = 50  # history items kept per user (most recent)
    n_experts: int = 4  # whitening experts of the shared adaptor
    dropout: float = 0.2  # encoder dropout
    epochs: int = 3  # most pretraining epochs (early stopping on the sources' validation)
    finetune_epochs: int = 3  # most fine-tuning epochs (early stopping on the target's validation)
    batch_size: int = 64  # training windows per batch
    lr: float = 0.001  # Adam learning rate
    patience: int = 2  # validations without gain before stopping
    valid_users: int = 300  # users per domain sampled for early stopping
    seed: int = 42  # initialisation, batches and validation samples

    def __post_init__(self) -> None:
        if self.finetune_mode not in ("efficient", "full"):
            raise ConfigError(f"params.yaml seqrec.finetune_mode must be efficient or full, got {self.finetune_mode!r}")
        for key in ("epochs", "finetune_epochs", "batch_size", "max_len", "dim", "layers", "heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"params.yaml seqrec.{key} must be >= 1, got {getattr(self, key)}")

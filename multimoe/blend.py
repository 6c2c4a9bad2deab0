"""A neural model blended with gradient boosting (``model.blend=hgb``), and with a product of per-modality
support-vector machines too (``model.blend=hgb+svm``).

The network trains as it would alone (early stopping on validation). Then histogram gradient boosting (``hgb``:
the same trees the ``hgb`` preset fits, ``model.hgb_max_iter`` rounds, the run's seed) is fit on the training split,
and the model predicts

    p = w * p_network + (1 - w) * p_trees

with w the value in {0, 0.1, ..., 1} of lowest log loss on the validation split (the first of equal ones; the
validation split the network's early stopping read, and nothing else). The two err on different rows where the
trees are strong: ``multimoe-blend`` (5 members blended) is above gradient boosting beyond noise at 9 of the accuracy
sweep's 11 points and below it at none (the README's results section).

``hgb+svm`` adds a third member, ``Product``: one RBF support-vector machine per modality, multiplied over the
modalities a sample has (naive Bayes over modalities), which is strong where the modalities are nearly independent
given the class (mfeat's six views of a digit) and weak where they are not (landsat's neighbouring pixels). Then

    p = w * p_network + v * p_machines + (1 - w - v) * p_trees

with (w, v) on the same grid, w + v <= 1, of lowest validation log loss. ``model.blend_pool=geometric`` pools the
members by their weighted geometric mean instead,

    p proportional to p_network^w * p_machines^v * p_trees^(1 - w - v)

(a weighted product of experts, the machines' own rule across modalities), with its own weights chosen the same
way. ``multimoe-blend-svm`` is the geometric blend of the three (the README's results section gives its figures).

The blend is one torch module (``Blend``): the trees are walked in torch, all of them at once, on the batch's
inputs with NaN in missing cells and absent modalities, as the ``hgb`` preset reads them, in float64 with
scikit-learn's arithmetic (``Trees``, equal to its ``predict_proba`` to 1e-12); the machines' kernels are computed
in torch from their support vectors. So evaluation, the routing report, ``predict``, the estimator and ONNX export
read a blended run as any other, and its checkpoint holds the trees' node arrays and the machines' support vectors
beside the network's weights (no pickle). The trees and machines read table and embedding modalities only.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.optimize import minimize
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import SVC
from torch import Tensor, nn

from multimoe.baselines import HGB
from multimoe.batch import Batch
from multimoe.config import ConfigError, ModelConfig
from multimoe.data.dataset import DataSchema, MultimodalData
from multimoe.model import ModelOutput, build_model

WEIGHTS = tuple(i / 10 for i in range(11))  # the network's weights w tried on validation
TREE_KINDS = ("table", "embedding")  # the modality kinds the trees read (their columns)
_SVM_NUMBERS = ("sv", "coef", "intercept", "prob_a", "prob_b")  # a machine's fitted numbers (its size)
_SVM = (*_SVM_NUMBERS, "gamma", "pair", "classes")  # Product's arrays, per modality
SVM_C = 10.0  # the per-modality machines' C (fixed: not tuned)
FLOOR = 1e-6  # a machine's least class probability (a class it never saw)
RATIO_CLIP = 1e-7  # pairwise probabilities kept in [clip, 1 - clip], as libsvm does
PROB_CLIP = 1e-12  # a member's (and the blend's) least class probability before its logarithm
_ARRAYS = ("baseline", "tree_start", "feature", "threshold", "missing_left", "left", "right", "is_leaf", "value")


def _refuse_other_kinds(schema: DataSchema, what: str) -> None:
    """A ConfigError naming the modalities of kinds other than ``TREE_KINDS`` (the fitted members read columns)."""
    other = [f"{m} ({s.kind})" for m, s in zip(schema.modalities, schema.inputs) if s.kind not in TREE_KINDS]
    if other:
        raise ConfigError(f"{what} read table and embedding modalities only, not {other}")


class _Fitted(nn.Module):
    """A blend member whose buffers take their sizes from the data it is fit on."""

    def size_from(self, state: dict[str, Tensor], prefix: str) -> None:
        """Buffers of the sizes and types a checkpoint's ``state`` holds (``load_checkpoint`` calls this before
        loading: the sizes are the fitted member's, not known when the module is built)."""
        for name, _ in list(self.named_buffers(recurse=False)):
            if prefix + name in state:
                saved = state[prefix + name]
                setattr(self, name, torch.zeros(saved.shape, dtype=saved.dtype))


class Trees(_Fitted):
    """Gradient boosting's fitted trees (``HGB.arrays``) as buffers; ``forward(batch)`` gives its class
    probabilities (B x C, float64). Every tree is walked for every row at once, one level a step, ``depth`` steps
    (a leaf stays where it is): a fixed loop of gathers, which ONNX export traces."""

    def __init__(self, schema: DataSchema) -> None:
        super().__init__()
        self.modalities, self.num_classes = schema.modalities, schema.num_classes
        self.depth = 0
        _refuse_other_kinds(schema, "model.blend=hgb: the trees")
        for name in (*_ARRAYS, "classes"):
            self.register_buffer(name, torch.zeros(0))
        self.register_load_state_dict_post_hook(_depth_after_loading)

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> Trees:
        """Take a fitted ``HGB``'s arrays (``state_dict``)."""
        for name in (*_ARRAYS, "classes"):
            setattr(self, name, torch.from_numpy(np.ascontiguousarray(arrays[name])))
        self._set_depth()
        return self

    def _set_depth(self) -> None:
        """The longest path from a root to a leaf (the levels ``forward`` walks)."""
        depth, nodes, starts = 0, self.tree_start, self.tree_start  # the nodes of one level, their trees' starts
        while True:
            inner = ~self.is_leaf[nodes]
            if not inner.any():
                break
            depth += 1
            nodes, starts = nodes[inner], starts[inner]
            children = torch.cat([starts + self.left[nodes], starts + self.right[nodes]])
            nodes, starts = children, torch.cat([starts, starts])
        self.depth = depth

    def design(self, batch: Batch) -> Tensor:
        """B x ΣF float64 inputs with NaN in missing cells and absent modalities (``baselines.design_matrix``)."""
        blocks = []
        for m, name in enumerate(self.modalities):
            x = batch.inputs[name].double()
            gone = batch.cell_missing[name] | ~batch.present_BM[:, m : m + 1]
            blocks.append(torch.where(gone, torch.full_like(x, float("nan")), x))
        return torch.cat(blocks, dim=1)

    def forward(self, batch: Batch) -> Tensor:
        X_BF = self.design(batch)
        per_iteration = self.baseline.shape[0]
        trees = self.tree_start.shape[0]
        node_BT = self.tree_start.expand(X_BF.shape[0], trees)
        for _ in range(self.depth):
            x_BT = X_BF.gather(1, self.feature[node_BT])
            nan_BT = torch.isnan(x_BT)  # (not a where on booleans: onnxruntime has no kernel for it)
            go_left = (nan_BT & self.missing_left[node_BT]) | (~nan_BT & (x_BT <= self.threshold[node_BT]))
            child = self.tree_start + torch.where(go_left, self.left[node_BT], self.right[node_BT])
            node_BT = torch.where(self.is_leaf[node_BT], node_BT, child)
        group_TK = nn.functional.one_hot(torch.arange(trees, device=X_BF.device) % per_iteration, per_iteration)
        raw_BK = self.baseline + self.value[node_BT] @ group_TK.double()
        if per_iteration == 1:
            p1 = torch.sigmoid(raw_BK[:, 0])
            probs_BK = torch.stack([1 - p1, p1], dim=1)
        else:
            probs_BK = raw_BK.softmax(dim=1)
        return probs_BK @ nn.functional.one_hot(self.classes, self.num_classes).double()  # classes seen in training


def _depth_after_loading(module: Trees, keys) -> None:
    module._set_depth()


class Product(_Fitted):
    """One RBF support-vector machine per modality (``SVM_C``, the kernel width 1 / (features x variance), as
    scikit-learn's ``gamma="scale"``), fit on the training rows that have the modality; the class probabilities
    are the product over the modalities a sample has of each machine's, divided by the training prior once per
    modality beyond the first (naive Bayes over modalities: the modalities taken as independent given the class).

    A machine's probabilities come from its one-vs-one decisions: each pair's Platt sigmoid (the A and B that
    scikit-learn fits by internal cross-validation) gives r_ab, the probability of a over b, and the pairs are
    coupled in closed form (Price et al., 1995): p_a proportional to 1 / (sum over b of 1 / r_ab - (k - 2)). With two
    classes this is scikit-learn's ``predict_proba``; with more, its iterative coupling (Wu, Lin and Weng) differs by
    little. A class a machine never saw has probability ``FLOOR``; a modality whose training rows hold one class only
    has no machine (it contributes nothing). Inputs: standardised columns, 0 in missing cells (logreg's design)."""

    def __init__(self, schema: DataSchema) -> None:
        super().__init__()
        self.modalities, self.num_classes = schema.modalities, schema.num_classes
        _refuse_other_kinds(schema, "model.blend=hgb+svm: the machines")
        self.register_buffer("log_prior", torch.zeros(0, dtype=torch.float64))
        for i in range(len(self.modalities)):
            for name in _SVM:
                self.register_buffer(f"{name}{i}", torch.zeros(0))

    def fit(self, train: MultimodalData, seed: int) -> Product:
        labels_N = train.labels_N.numpy()
        prior_C = np.bincount(labels_N, minlength=self.num_classes) / len(labels_N)
        self.log_prior = torch.from_numpy(np.log(np.clip(prior_C, FLOOR, None)))
        for i, name in enumerate(self.modalities):
            has = train.present_NM[:, i].numpy()
            x = _inputs(train.values[name], train.cell_missing[name]).numpy()[has]
            y = labels_N[has]
            if len(np.unique(y)) < 2:
                continue
            var = x.var()
            gamma = 1.0 / (x.shape[1] * var) if var > 0 else 1.0
            arrays = _fit_machine(x, y, gamma, seed)
            for key, value in arrays.items():
                setattr(self, f"{key}{i}", torch.from_numpy(value))
        return self

    def forward(self, batch: Batch) -> Tensor:
        log_B1 = batch.present_BM.new_zeros(batch.present_BM.shape[0], 1, dtype=torch.float64)
        logp_BC = log_B1 + self.log_prior
        for i, name in enumerate(self.modalities):
            if getattr(self, f"sv{i}").numel() == 0:
                continue
            probs_BC = self.machine(i, _inputs(batch.inputs[name], batch.cell_missing[name]))
            here_B1 = batch.present_BM[:, i : i + 1].double()
            logp_BC = logp_BC + here_B1 * (probs_BC.log() - self.log_prior)
        return logp_BC.softmax(dim=1)

    def decisions(self, i: int, x_BF: Tensor) -> Tensor:
        """B x P one-vs-one decision values of modality ``i``'s machine (libsvm's sign: positive favours a pair's
        first class)."""
        return decisions(x_BF, *(getattr(self, f"{key}{i}") for key in ("sv", "coef", "intercept", "gamma")))

    def machine(self, i: int, x_BF: Tensor) -> Tensor:
        """B x C class probabilities of modality ``i``'s machine: Platt's pairwise probabilities, coupled."""
        a_P, b_P = getattr(self, f"prob_a{i}"), getattr(self, f"prob_b{i}")
        r_BP = torch.sigmoid(-(self.decisions(i, x_BF) * a_P + b_P)).clamp(RATIO_CLIP, 1 - RATIO_CLIP)
        pair_P2, classes_K = getattr(self, f"pair{i}"), getattr(self, f"classes{i}")
        k = classes_K.shape[0]
        first_PK = nn.functional.one_hot(pair_P2[:, 0], k).double()
        second_PK = nn.functional.one_hot(pair_P2[:, 1], k).double()
        q_BK = 1 / ((1 / r_BP) @ first_PK + (1 / (1 - r_BP)) @ second_PK - (k - 2))
        q_BK = q_BK / q_BK.sum(dim=1, keepdim=True)
        seen_KC = nn.functional.one_hot(classes_K, self.num_classes).double()
        return (q_BK @ seen_KC + FLOOR * (1 - seen_KC.sum(dim=0))).clamp(min=FLOOR)


def _fit_machine(x: np.ndarray, y: np.ndarray, gamma: float, seed: int) -> dict[str, np.ndarray]:
    """One modality's machine: scikit-learn's SVC with Platt's A and B from its ``probability=True`` (libsvm's
    cross-validation), or where that parameter is gone (scikit-learn >= 1.11) the same procedure done here
    (``platt_from_folds``)."""
    with warnings.catch_warnings():  # SVC's probability=True: deprecated in scikit-learn 1.9, gone in 1.11
        warnings.simplefilter("ignore", FutureWarning)
        try:
            svm = SVC(C=SVM_C, gamma=gamma, probability=True, random_state=seed)
        except TypeError:  # no such parameter
            svm = SVC(C=SVM_C, gamma=gamma, random_state=seed).fit(x, y)
            ab = platt_from_folds(x, y, gamma, seed)
        else:
            svm.fit(x, y)
            ab = np.stack([svm.probA_, svm.probB_], axis=1)
    return {**svm_arrays(svm, gamma), "prob_a": ab[:, 0].astype(np.float64), "prob_b": ab[:, 1].astype(np.float64)}


def platt_from_folds(x: np.ndarray, y: np.ndarray, gamma: float, seed: int, folds: int = 5) -> np.ndarray:
    """P x 2 Platt (A, B) of each one-vs-one pair, as libsvm fits them for ``probability=True``: the machine's
    decision values on held-out rows (``folds`` stratified folds; each fold's machine fit on the others), then per pair
    (a, b) the sigmoid 1 / (1 + exp(A f + B)) of the rows of a and b fit to Platt's targets (``platt``). A pair with
    no held-out value (a class of one row) gets A = B = 0: probability 1/2."""
    classes = np.unique(y)
    k, labels = len(classes), np.searchsorted(classes, y)
    pairs = one_vs_one(k)
    held_out = np.full((len(y), len(pairs)), np.nan)  # a pair's value where the fold's machine lacks one of its classes
    splits = min(folds, int(np.bincount(labels).max()))
    held_out_folds = StratifiedKFold(splits, shuffle=True, random_state=seed).split(x, labels) if splits > 1 else ()
    for fit_rows, rows in held_out_folds:
        known = np.unique(labels[fit_rows])
        if len(known) < 2:
            continue
        machine = svm_arrays(SVC(C=SVM_C, gamma=gamma, random_state=seed).fit(x[fit_rows], labels[fit_rows]), gamma)
        arrays = (torch.from_numpy(machine[key]) for key in ("sv", "coef", "intercept", "gamma"))
        columns = [pairs.index(tuple(pair)) for pair in known[machine["pair"]]]  # its pairs among all classes'
        held_out[np.ix_(rows, columns)] = decisions(torch.from_numpy(x[rows]), *arrays).numpy()
    ab = np.zeros((len(pairs), 2))
    for p, (a, b) in enumerate(pairs):
        rows = ((labels == a) | (labels == b)) & ~np.isnan(held_out[:, p])
        ab[p] = platt(held_out[rows, p], labels[rows] == a) if rows.any() else (0.0, 0.0)  # none: 1/2
    return ab


def platt(f: np.ndarray, first: np.ndarray) -> tuple[float, float]:
    """Platt's (A, B) for decision values ``f`` whose rows belong to a pair's first class where ``first``: the
    minimiser of the cross-entropy of 1 / (1 + exp(A f + B)) against Platt's targets, (n1 + 1) / (n1 + 2) for the
    first class's rows and 1 / (n0 + 2) for the others (Platt 1999; Lin, Lin and Weng 2007)."""
    n1, n0 = int(first.sum()), int((~first).sum())
    target = np.where(first, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))

    def loss(ab: np.ndarray) -> tuple[float, np.ndarray]:
        z = ab[0] * f + ab[1]  # p = sigmoid(-z), the first class's probability
        value = (target * np.logaddexp(0, z) + (1 - target) * np.logaddexp(0, -z)).sum()
        grad_z = 1 / (1 + np.exp(-z)) - (1 - target)
        return float(value), np.array([(grad_z * f).sum(), grad_z.sum()])

    start = np.array([0.0, np.log((n0 + 1) / (n1 + 1))])
    a, b = minimize(loss, start, jac=True, method="L-BFGS-B", options={"gtol": 1e-10}).x
    return float(a), float(b)


def decisions(x_BF: Tensor, sv_SF: Tensor, coef_PS: Tensor, intercept_P: Tensor, gamma: Tensor) -> Tensor:
    """B x P one-vs-one decision values of the machine ``svm_arrays`` describes (libsvm's sign)."""
    d2_BS = (x_BF**2).sum(dim=1, keepdim=True) + (sv_SF**2).sum(dim=1) - 2 * x_BF @ sv_SF.T
    return (-gamma * d2_BS.clamp(min=0)).exp() @ coef_PS.T + intercept_P


def _inputs(x: Tensor, missing: Tensor) -> Tensor:
    """float64 standardised columns with 0 (the training mean) in missing cells."""
    return torch.where(missing, torch.zeros((), dtype=torch.float64), x.double())


def one_vs_one(k: int) -> list[tuple[int, int]]:
    """The pairs (a, b), a < b, of ``k`` classes in libsvm's (and scikit-learn's) order."""
    return [(a, b) for a in range(k) for b in range(a + 1, k)]


def svm_arrays(svm: SVC, gamma: float) -> dict[str, np.ndarray]:
    """A fitted SVC's one-vs-one machines as dense arrays: for pair p = (a, b), a < b in scikit-learn's order,
    decision_p(x) = sum_s coef[p, s] K(x, sv_s) + intercept[p] (libsvm's sign: positive favours a; ``decisions``);
    ``pair`` holds (a, b) as indices into ``classes``."""
    k, sv = len(svm.classes_), svm.support_vectors_.astype(np.float64)
    starts = np.concatenate([[0], np.cumsum(svm.n_support_)])
    dual, intercept = svm.dual_coef_, svm.intercept_
    if k == 2:  # scikit-learn flips the binary machine's sign (positive favours the second class); libsvm's is kept
        dual, intercept = -dual, -intercept
    pairs = one_vs_one(k)
    coef = np.zeros((len(pairs), len(sv)))
    for p, (a, b) in enumerate(pairs):
        coef[p, starts[a] : starts[a + 1]] = dual[b - 1, starts[a] : starts[a + 1]]
        coef[p, starts[b] : starts[b + 1]] = dual[a, starts[b] : starts[b + 1]]
    return {"sv": sv, "coef": coef, "intercept": np.asarray(intercept, dtype=np.float64),
            "gamma": np.asarray(gamma, dtype=np.float64), "pair": np.asarray(pairs, dtype=np.int64).reshape(-1, 2),
            "classes": np.asarray(svm.classes_, dtype=np.int64)}  # fmt: skip


class Blend(nn.Module):
    """The network's, the trees' and (``model.blend=hgb+svm`` only) the per-modality machines' class probabilities
    pooled with weights ``weight``, ``product_weight`` and the rest: their weighted mean (``model.blend_pool=linear``)
    or their normalised weighted geometric mean (``geometric``); logits are the pooled probabilities' logarithm. The
    network's router outputs pass through (routing statistics and the report read the network)."""

    def __init__(self, network: nn.Module, trees: Trees, weight: float = 0.0, product: Product | None = None,
                 product_weight: float = 0.0, geometric: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.network, self.trees, self.product, self.geometric = network, trees, product, geometric
        self.cfg, self.schema = network.cfg, network.schema
        self.register_buffer("weight", torch.tensor(float(weight), dtype=torch.float64))
        if product is not None:
            self.register_buffer("product_weight", torch.tensor(float(product_weight), dtype=torch.float64))

    def describe(self) -> str:
        """The pooling in words: "w x the network + t x gradient boosting[ + v x the per-modality machines' product]
        (weighted mean | weighted geometric mean)", the weights to one decimal (they are a 0.1 grid's)."""
        w = float(self.weight)
        v = float(self.product_weight) if self.product is not None else 0.0
        machines = "" if self.product is None else f" + {v:.1f} x the per-modality machines' product"
        pool = "weighted geometric mean" if self.geometric else "weighted mean"
        return f"{w:.1f} x the network + {max(1 - w - v, 0):.1f} x gradient boosting{machines} ({pool})"

    def costs(self, network: dict) -> dict:
        """``network``'s costs (``cost.model_costs``) with the fitted members added, as the baselines count theirs
        (sizes: not comparable to neural parameters): parameters and active parameters + the trees' nodes + the
        machines' stored numbers (support vectors, coefficients, intercepts, Platt's A and B); inference FLOPs per
        sample + one comparison per tree and level ``Trees.forward`` walks + per machine its two matrix products
        (2 S F with the support vectors, 2 P S with the coefficients; every modality present). Training FLOPs stay
        the network's: the members are fit by scikit-learn, not by gradient steps."""
        size = self.trees.is_leaf.numel()
        flops = self.trees.tree_start.numel() * self.trees.depth
        if self.product is not None:
            for i in range(len(self.product.modalities)):
                arrays = {key: getattr(self.product, f"{key}{i}") for key in _SVM_NUMBERS}
                size += sum(a.numel() for a in arrays.values())
                flops += 2 * arrays["sv"].numel() + 2 * arrays["coef"].numel()
        return {**network, "parameters": network["parameters"] + size,
                "active_parameters": network["active_parameters"] + size,
                "flops_per_sample": network["flops_per_sample"] + flops}  # fmt: skip

    def forward(self, batch: Batch) -> ModelOutput:
        out = self.network(batch)
        members = [(self.weight, out.logits_BC.double().softmax(dim=1))]
        if self.product is not None:
            members.append((self.product_weight, self.product(batch)))
        members.append((1 - sum(w for w, _ in members), self.trees(batch)))
        return ModelOutput(pool(members, self.geometric).to(out.logits_BC.dtype), out.aux_loss, out.moe, out.info)


def pool(members: list[tuple[float | Tensor, Tensor]], geometric: bool) -> Tensor:
    """B x C log class probabilities of the (weight, B x C probabilities) ``members`` (weights summing to 1): the
    logarithm of their weighted mean, or with ``geometric`` their weighted mean log-probability, normalised."""
    if geometric:
        return sum(w * p.clamp(min=PROB_CLIP).log() for w, p in members).log_softmax(dim=1)
    return sum(w * p for w, p in members).clamp(min=PROB_CLIP).log()


def build_trained(cfg: ModelConfig, schema: DataSchema) -> nn.Module:
    """The model a finished run saved, unfitted, for its checkpoint to load into: the network, or with
    ``model.blend`` the network blended with empty trees (and machines; the checkpoint gives their sizes)."""
    network = build_model(cfg, schema)
    if cfg.blend == "none":
        return network
    product = Product(schema) if cfg.blend == "hgb+svm" else None
    return Blend(network, Trees(schema), product=product, geometric=cfg.blend_pool == "geometric")


def fit_blend(network: nn.Module, cfg: ModelConfig, seed: int, train: MultimodalData, val: MultimodalData,
              batch_size: int, device) -> tuple[Blend, dict]:  # fmt: skip
    """Fit the trees (and with ``hgb+svm`` the per-modality machines) on ``train`` and choose the weights on ``val``:
    the network's w and the machines' v in ``WEIGHTS`` with w + v <= 1, the trees 1 - w - v, of lowest validation
    log loss of the blend pooled as ``model.blend_pool`` says (the first of equal ones, w then v ascending); returns
    the blend and what was chosen."""
    trees = Trees(train.schema)  # refuses modalities of other kinds before anything is fit
    product = Product(train.schema) if cfg.blend == "hgb+svm" else None
    if len(val) == 0:
        raise ConfigError(f"model.blend={cfg.blend} chooses its weights on the validation split, which is empty")
    hgb = HGB(cfg, seed).fit(train)
    trees.set_arrays({k: v.numpy() for k, v in hgb.state_dict().items()})
    if product is not None:
        product.fit(train, seed)
    blend = Blend(network, trees, product=product, geometric=cfg.blend_pool == "geometric").to(device)
    labels_N = val.labels_N
    was_training = network.training
    network.eval()
    nets, products = [], []
    with torch.no_grad():  # in float64, as the blend's forward pass reads the members
        for batch in val.batches(batch_size):
            batch = batch.to(device)
            nets.append(network(batch).logits_BC.double().softmax(dim=1).cpu())
            if product is not None:
                products.append(blend.product(batch).cpu())
    network.train(was_training)
    p_net = torch.cat(nets)
    p_product = torch.cat(products) if products else torch.zeros_like(p_net)
    p_trees = torch.from_numpy(hgb.predict(val).probs_NC)  # the torch trees' (to 1e-12), without a network pass
    svm_weights = WEIGHTS if product is not None else (0.0,)
    losses = {}
    for w in WEIGHTS:
        for v in (v for v in svm_weights if w + v <= 1 + 1e-9):
            members = [(w, p_net), (v, p_product), (max(1 - w - v, 0.0), p_trees)]
            logp_NC = pool(members, cfg.blend_pool == "geometric")
            losses[(w, v)] = float(-logp_NC[torch.arange(len(labels_N)), labels_N].mean())
    best_w, best_v = min(losses, key=lambda wv: losses[wv])
    blend.weight.fill_(best_w)
    chosen = {"weight": best_w}
    if product is not None:
        blend.product_weight.fill_(best_v)
        chosen["svm_weight"] = best_v
        return blend, {**chosen, "val_log_loss": {f"{w:.1f},{v:.1f}": loss for (w, v), loss in losses.items()}}
    return blend, {**chosen, "val_log_loss": {w: loss for (w, _), loss in losses.items()}}

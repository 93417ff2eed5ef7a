"""The settings schema of every built-in algorithm (``algo.*``), each typing its ``conf/algo`` YAML.

Each sits here rather than beside its algorithm's code (``metarun/algos/``), which needs torch: the CLI composes
and checks a config before it imports torch. An algorithm of your own keeps its schema beside its code (see
``examples/own_algorithm``), subclassing ``AlgorithmConfig`` as these do.
"""

from dataclasses import dataclass
from typing import List, Optional

from omegaconf import MISSING

from metarun.config.fields import choice, positive, schema, setting


@dataclass
class AlgorithmConfig:
    """What every algorithm's settings have: where its code is, and its name."""

    _target_: str = setting(MISSING, help="the algorithm's import path (a metarun.algos.Algorithm); your own: "
                                          "my_module.ALGORITHM")
    name: str = setting(MISSING, help="the algorithm (set by algo=...), as results.json and run names show it")


@dataclass
class EmbeddingConfig(AlgorithmConfig):
    """What the algorithms that score a task on the backbone's embeddings share (metarun/algos/embedding.py)."""

    embedding_pass: str = choice(
        "separate", "joint",
        help="an episode's support and query sets through the backbone in a pass each, or in one (joint: one larger "
             "batch, half the kernel launches, as ProtoNet's and R2-D2's reference code); they differ only under "
             "batch norm with batch statistics, where joint normalises both sets together (docs/algorithms.md)")


@dataclass
class InnerLoopConfig(AlgorithmConfig):
    """The inner-loop knobs every gradient-based algorithm has."""

    inner_lr: float = positive(0.01, help="step size of the inner loop (alpha)")
    inner_steps: int = positive(1, help="inner steps on the support set in training")
    test_inner_steps: int = positive(10, help="inner steps at validation and meta-test")


@dataclass
class DifferentiableInnerLoopConfig(InnerLoopConfig):
    """An inner loop the meta-gradient flows through (MAML and the algorithms built on its code)."""

    first_order: bool = setting(False, help="true: first-order MAML (inner gradients treated as constants)")
    checkpoint_inner: bool = setting(False, help="recompute each inner step in the backward pass instead of keeping "
                                                 "its activations: memory for compute (tasks then run in a loop)")
    head_init: str = choice(
        "learned", "zero", "prototypes",
        help="each task's head before its inner loop: learned (the meta-learned head, MAML's), zero, or prototypes "
             "(weights 2·prototype and bias -|prototype|² of the support embeddings: fo-Proto-MAML, Triantafillou et "
             "al., 2020)")


@schema("algo", "maml")
@dataclass
class MAMLConfig(DifferentiableInnerLoopConfig):
    """MAML and first-order MAML (Finn et al., 2017)."""

    _target_: str = "metarun.algos.maml.ALGORITHM"
    name: str = "maml"
    multi_step_loss: bool = setting(False, help="MAML++ (Antoniou et al., 2019), each off by default (algo=mamlpp "
                                                "turns all on); see metarun/algos/maml.py")
    msl_iterations: int = positive(5000, help="MSL weights reach the last step after this many iterations")
    learned_lrs: bool = setting(False, help="a meta-learned inner learning rate per layer and step (LSLR)")
    per_step_bn: bool = setting(False, help="a meta-learned batch-norm weight and bias per inner step (needs "
                                            "model.norm=batch)")
    first_order_iterations: int = setting(0, help="derivative-order annealing: first order up to this iteration")


@schema("algo", "anil")
@dataclass
class ANILConfig(DifferentiableInnerLoopConfig):
    """ANIL (Raghu et al., 2019): MAML's inner loop on the head only."""

    _target_: str = "metarun.algos.anil.ALGORITHM"
    name: str = "anil"
    head: Optional[str] = setting(None, help="parameter-name prefix of the head; null = the last layer's")


@schema("algo", "metasgd")
@dataclass
class MetaSGDConfig(DifferentiableInnerLoopConfig):
    """Meta-SGD (Li et al., 2017): per-parameter learned inner learning rates, initialised at inner_lr."""

    _target_: str = "metarun.algos.metasgd.ALGORITHM"
    name: str = "metasgd"
    test_inner_steps: int = positive(1)


@schema("algo", "reptile")
@dataclass
class ReptileConfig(InnerLoopConfig):
    """Reptile (Nichol et al., 2018): inner Adam/SGD on support mini-batches, outer interpolation."""

    _target_: str = "metarun.algos.reptile.ALGORITHM"
    name: str = "reptile"
    inner_lr: float = positive(0.001)
    inner_steps: int = positive(5)
    test_inner_steps: int = positive(50)
    inner_batch: Optional[int] = positive(10, help="support examples per inner step; null = the whole support set")
    inner_optimizer: str = choice("adam", "sgd", help="the inner loop's optimiser")
    inner_betas: List[float] = setting([0.0, 0.999], help="the inner Adam's betas")


@schema("algo", "protonet")
@dataclass
class ProtoNetConfig(EmbeddingConfig):
    """Prototypical Networks (Snell et al., 2017): no inner loop, no head."""

    _target_: str = "metarun.algos.protonet.ALGORITHM"
    name: str = "protonet"


@schema("algo", "matchingnet")
@dataclass
class MatchingNetConfig(EmbeddingConfig):
    """Matching Networks (Vinyals et al., 2016): cosine attention over the support set, no head."""

    _target_: str = "metarun.algos.matchingnet.ALGORITHM"
    name: str = "matchingnet"
    fce: bool = setting(False, help="full context embeddings (FCE, the paper's appendix A): support embeddings read "
                                    "by a bidirectional LSTM over the support set, queries by an attention LSTM over "
                                    "those (meta/fce/*); false: the backbone's embeddings alone")
    fce_steps: int = positive(5, help="FCE: the attention LSTM's processing steps (K \"reads\" of the support set)")


@schema("algo", "relationnet")
@dataclass
class RelationNetConfig(EmbeddingConfig):
    """Relation Networks (Sung et al., 2018): a learned relation module on concatenated embeddings, no head."""

    _target_: str = "metarun.algos.relationnet.ALGORITHM"
    name: str = "relationnet"
    hidden: int = positive(8, help="hidden units of the relation module's MLP (the paper's FC layer of 8)")
    loss: str = choice("mse", "ce", help="mse: the paper's squared error of the scores against one-hot targets; ce: "
                                         "cross-entropy on the relation module's pre-sigmoid outputs as logits")


@schema("algo", "r2d2")
@dataclass
class R2D2Config(EmbeddingConfig):
    """R2-D2 (Bertinetto et al., 2019): a closed-form ridge-regression head on the embeddings, no head."""

    _target_: str = "metarun.algos.r2d2.ALGORITHM"
    name: str = "r2d2"
    ridge_lambda: float = positive(50.0, help="the ridge penalty lambda on the support set's mean squared error "
                                              "(lambda is Python's keyword, hence the name): its initial value when "
                                              "learned; 50 in the reference code")
    learn_lambda: bool = setting(True, help="meta-learn lambda (meta/log_lambda, so it stays > 0); false: fixed at "
                                            "ridge_lambda")
    scale: float = positive(10.0, help="the logit scale alpha's initial value (meta/scale, meta-learned)")


@schema("algo", "metaoptnet_svm")
@dataclass
class MetaOptNetSVMConfig(EmbeddingConfig):
    """MetaOptNet-SVM (Lee et al., 2019): a differentiable multi-class SVM head on the embeddings, no head."""

    _target_: str = "metarun.algos.metaoptnet_svm.ALGORITHM"
    name: str = "metaoptnet_svm"
    c: float = positive(0.1, help="the SVM's regularisation C (the bound on the dual variables), 0.1 in the paper")
    svm_iterations: int = positive(50, help="accelerated projected-gradient steps on the SVM's dual, unrolled for the "
                                            "meta-gradient (training and test)")
    scale: float = positive(1.0, help="the logit scale's initial value (meta/scale, meta-learned; 1 in the reference "
                                      "code)")


@schema("algo", "baseline")
@dataclass
class BaselineConfig(EmbeddingConfig):
    """Baseline and Baseline++ (Chen et al., 2019): pre-training on all meta-train classes, a new head per task."""

    _target_: str = "metarun.algos.baseline.ALGORITHM"
    name: str = "baseline"
    classifier: str = choice("linear", "cosine", help="the classifier in pre-training and at meta-test: linear "
                                                      "(Baseline) or cosine (Baseline++, algo=baselinepp)")
    scale: float = positive(10.0, help="the cosine classifier's fixed scale of its similarities")
    fit_steps: int = positive(100, help="meta-test: SGD steps fitting a new head on the support embeddings")
    fit_lr: float = positive(0.01, help="meta-test: the head's SGD learning rate (momentum 0.9)")
    fit_weight_decay: float = setting(0.001, help="meta-test: the head's weight decay")


@schema("algo", "metalstm")
@dataclass
class MetaLSTMConfig(InnerLoopConfig):
    """Meta-LSTM (Ravi & Larochelle, 2017): an LSTM meta-learner whose cell state is the learner's parameters."""

    _target_: str = "metarun.algos.metalstm.ALGORITHM"
    name: str = "metalstm"
    inner_lr: float = positive(0.01, help="the input gate (learning rate) at initialisation, below 1: its bias starts "
                                          "at logit(inner_lr), so the first updates are SGD at about this rate (the "
                                          "reference code draws the bias from U(-5, -4): 0.007 to 0.018)")
    inner_steps: int = positive(5, help="learner updates on the whole support set in training (the LSTM's time steps)")
    test_inner_steps: int = positive(5, help="learner updates at validation and meta-test (the paper: as in training)")
    hidden_size: int = positive(20, help="the first LSTM layer's hidden units, shared by every parameter coordinate")
    forget_bias: float = setting(5.0, help="the forget gate's bias at initialisation: f = sigmoid(5) = 0.993 keeps "
                                           "the parameters (reference: U(4, 5))")


@schema("algo", "imaml")
@dataclass
class IMAMLConfig(InnerLoopConfig):
    """iMAML (Rajeswaran et al., 2019): implicit meta-gradients through a proximal inner objective."""

    _target_: str = "metarun.algos.imaml.ALGORITHM"
    name: str = "imaml"
    inner_lr: float = positive(0.1, help="gradient-descent step size on the inner problem, support loss + lam/2 |phi "
                                         "- theta|^2 (inner_lr * lam < 2)")
    inner_steps: int = positive(16, help="inner steps from theta in training (the paper's Omniglot: 16 5-way, 25 "
                                         "20-way)")
    test_inner_steps: int = positive(16, help="the same proximal problem's steps at validation and meta-test")
    lam: float = positive(2.0, help="the proximal regularisation strength lambda (2.0 in the paper's experiments)")
    cg_steps: int = positive(5, help="conjugate-gradient iterations solving (I + H/lam) g = query gradient (5 in the "
                                     "paper)")
    cg_damping: float = setting(0.0, help="added to the system's diagonal, ((1 + cg_damping) I + H/lam) g = query "
                                          "gradient, which keeps CG stable where the support loss has negative "
                                          "curvature (>= 0; the authors' code uses 1.0; the paper's system is 0.0)")

"""Meta-Dataset's variable-way, variable-shot episodes (Triantafillou et al., 2020, "Meta-Dataset: A Dataset of
Datasets for Learning to Learn from Few Examples", ICLR), drawn as tensor operations on the training device.

The formulas are those of the official ``meta_dataset/data/sampling.py`` (``EpisodeDescriptionSampler``), with
the defaults of ``learn/gin/setups/data_config_common.gin``; an episode of a split whose class c holds n_c
images is drawn in five steps:

1. Classes (``EpisodeDescriptionSampler.sample_class_ids``). Classes with fewer than ``min_class_images`` images
   (``min_examples_in_class``) are never drawn. Without a hierarchy the ways N are uniform on
   [min_ways, min(max_ways, classes)] (``sample_num_ways_uniformly``) and the N classes a uniformly random set
   (``sample_class_ids_uniformly``). A bilevel hierarchy (Omniglot's alphabets, ``use_bilevel_hierarchy``)
   first picks a superclass uniformly, then N uniform on [min_ways, min(max_ways, its classes)] and N of its
   classes. A DAG (ILSVRC's WordNet graph, ``use_dag_hierarchy``) picks a node uniformly among those that span
   between min_ways and 392 drawable leaves (``MAX_SPANNING_LEAVES_ELIGIBLE``); its leaves are the classes,
   N = min(leaves, max_ways), a random subset when it spans more. ``ignore_dag``/``ignore_bilevel``
   (``ignore_dag_ontology``/``ignore_bilevel_ontology``) draw as without a hierarchy, and
   ``ignore_hierarchy_probability`` does so for that share of the episodes.
2. Queries per class (``compute_num_query``): q = min(max_queries, min_c floor(n_c / 2)), the same for every
   class; r_c = n_c - q images remain for the support set.
3. Support-set size (``sample_support_set_size``): beta ~ U[0, 1),
   S = min(max_support, sum_c floor(beta * min(max_support_per_class, r_c) + 1)), so S >= N.
4. Shots per class (``sample_num_support_per_class``): u_c ~ U[min_log_weight, max_log_weight),
   w_c = n_c exp(u_c), k_c = min(floor(w_c / sum w * (S - N)) + 1, r_c): at least one shot, roughly in
   proportion to the class sizes, log-uniformly unbalanced.
5. Images (the official reader's per-class shuffled streams): k_c + q distinct images of class c, uniformly at
   random; the first k_c go to the support set, the other q to the query set.

Each step is a few tensor operations over a whole meta-batch, with one host sync to size the outputs: a class
set is the N smallest of uniform random keys (as in ``EpisodeSampler``) over a padded table of each node's
classes; ways, queries, support-set sizes and shots are computed per task with masks over the largest ways of
the split; images are the k_c + q smallest of random keys over each class's positions, scattered into
class-major slots. Labels are 0..N-1 per task in the order the classes were drawn; slots past a task's own
support or query size hold label PAD (-1) and row 0. Image keys span the split's largest class for every drawn class:
memory O(T max_ways max_count).

Deviations from the official code:
- The random streams are torch's (one generator, a fixed sequence of draws per call) rather than numpy's, so
  episodes follow the same law but are not the official episodes.
- A ``Hierarchy`` of kind "dag" lists every node, leaves included, and a leaf spans one class: with
  min_ways = 1 a leaf is then a node that can be drawn, where the official code draws internal nodes only (with
  min_ways >= 2, the defaults included, the two agree).
- Support and query images are distinct images drawn uniformly for each episode on its own; the official reader
  reads them off each class's stream, reshuffled through a buffer (1000 by default), with cursors that carry
  over from one episode to the next.
- ``check`` raises the official sampler's errors (too few classes, a bilevel superclass smaller than min_ways,
  no eligible DAG node, min_class_images with a bilevel hierarchy) when the split is set up, and also the ones
  the official code raises only once an episode happens to draw the offending class or ways (a class of fewer
  than 2 images, max_support below the ways).
- ``use_all_classes``, fixed ``num_ways``/``num_support``/``num_query`` and SimCLR episodes are not part of this
  protocol (the fixed-way sampler covers fixed sizes).
"""

from dataclasses import dataclass

import torch

from metarun.config.datasets import VariableEpisodesConfig
from metarun.data.tasks import PAD

# The official bound on the leaves a DAG node may span to be drawn (``sampling.MAX_SPANNING_LEAVES_ELIGIBLE``):
# the smallest that leaves every ILSVRC leaf reachable.
MAX_SPANNING_LEAVES_ELIGIBLE = 392

KINDS = ("bilevel", "dag")


def check_protocol(protocol: VariableEpisodesConfig, key: str) -> None:
    """Raise ValueError, naming ``key``'s field, for settings no episode can follow (``check``'s types and signs
    come first: the bounds between fields are checked here)."""
    if protocol.max_ways < protocol.min_ways:
        raise ValueError(f"{key}.max_ways={protocol.max_ways} is below {key}.min_ways={protocol.min_ways}; raise it to "
                         f"at least {protocol.min_ways}")
    if protocol.min_log_weight > protocol.max_log_weight:
        raise ValueError(f"{key}.min_log_weight={protocol.min_log_weight} exceeds {key}.max_log_weight="
                         f"{protocol.max_log_weight}; swap them")
    if not 0.0 <= protocol.ignore_hierarchy_probability <= 1.0:
        raise ValueError(f"{key}.ignore_hierarchy_probability={protocol.ignore_hierarchy_probability} is not a "
                         "probability in [0, 1]")


@dataclass(frozen=True)
class Hierarchy:
    """Groups of a split's classes that an episode draws from.

    Attributes:
        kind: "bilevel" (each node a superclass, e.g. an Omniglot alphabet) or "dag" (each node of the split's
            class graph, listing the leaves it spans, unfiltered).
        nodes: the classes (0-based indices within the split) of each node.
        names: each node's name (an alphabet, a WordNet id), for messages; may be empty.
    """

    kind: str
    nodes: tuple[tuple[int, ...], ...]
    names: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Hierarchy.kind={self.kind!r} is not one of {', '.join(KINDS)}")

    @classmethod
    def from_groups(cls, groups: torch.Tensor) -> "Hierarchy":
        """A bilevel hierarchy whose superclasses are the groups of ``groups`` ([num_classes] group index of each
        class, e.g. ``sampler.class_groups``' groups), in the order of their index."""
        groups = torch.as_tensor(groups).cpu()
        order = torch.argsort(groups, stable=True)
        sizes = torch.unique_consecutive(groups[order], return_counts=True)[1]
        return cls("bilevel", tuple(tuple(part.tolist()) for part in torch.split(order, sizes.tolist())))


class VariableEpisodes:
    """Draws Meta-Dataset episodes (see the module docstring) of one split as rows of its image store."""

    def __init__(self, counts: torch.Tensor, offsets: torch.Tensor, hierarchy: Hierarchy = None,
                 protocol: VariableEpisodesConfig = VariableEpisodesConfig(), device: torch.device = torch.device("cpu"),
                 what: str = "the split", key: str = "dataset.variable"):
        """Find the nodes an episode may draw from, and put their padded class tables on ``device``.

        Args:
            counts: int64 [num_classes] images per class.
            offsets: int64 [num_classes + 1] first store row of each class (and the end).
            hierarchy: the split's class groups, or None to draw classes without one.
            what: the split, as messages name it ("the test split of aircraft").
            key: the config key of ``protocol``, as messages name its fields.
        """
        check_protocol(protocol, key)
        self.protocol, self.what, self.key, self.device = protocol, what, key, device
        self.counts = torch.as_tensor(counts, dtype=torch.int64).to(device)
        self.offsets = torch.as_tensor(offsets, dtype=torch.int64).to(device)
        sizes = self.counts.tolist()
        if hierarchy is not None and any(not 0 <= c < len(sizes) for node in hierarchy.nodes for c in node):
            raise ValueError(f"the class hierarchy of {what} names classes outside its {len(sizes)} classes")
        self.kind = None if hierarchy is None or ignored(hierarchy.kind, protocol) else hierarchy.kind
        self.drawable = [c for c, size in enumerate(sizes) if size >= protocol.min_class_images]
        nodes = hierarchy_nodes(hierarchy, sizes, protocol) if self.kind else []
        self.hierarchical = len(nodes)
        # the share of episodes drawn from one node of every drawable class: all without a hierarchy (or none
        # eligible), ``ignore_hierarchy_probability`` with one
        self.flat_share = protocol.ignore_hierarchy_probability if nodes else 1.0
        if self.flat_share > 0:
            nodes.append(self.drawable)
        self.problem = self.find_problem(hierarchy, nodes, sizes)
        self.tables(nodes)
        self.max_count = max(sizes, default=0)
        # every drawable class as large as the largest: no image key ever needs masking (Omniglot)
        self.even = all(sizes[c] == self.max_count for c in self.drawable)
        self.positions = torch.arange(self.max_count, device=device)

    def tables(self, nodes: list) -> None:
        """Padded [nodes, widest] class table, its padding mask, and each node's range of ways, on the device."""
        p, widest = self.protocol, max(len(node) for node in nodes)
        sizes = torch.tensor([len(node) for node in nodes])
        high = sizes.clamp(max=p.max_ways)
        low = high.clamp(max=p.min_ways)  # sample_num_ways_uniformly
        if self.kind == "dag":
            low[:self.hierarchical] = high[:self.hierarchical]  # a DAG node's ways are its leaves, at most max_ways
        self.members = torch.tensor([node + [0] * (widest - len(node)) for node in nodes], device=self.device)
        self.padding = (torch.arange(widest) >= sizes.unsqueeze(1)).to(self.device)
        self.low, self.spread = low.to(self.device), (high - low + 1).to(self.device)
        self.ways = int(high.max())
        self.fixed_ways = self.ways if bool((low == self.ways).all()) else None
        self.class_index = torch.arange(self.ways, device=self.device)

    def find_problem(self, hierarchy: Hierarchy, nodes: list, sizes: list):
        """The reason the split cannot supply episodes (a one-line message naming the key), or None."""
        p, key, what = self.protocol, self.key, self.what
        fewer = f" with at least {key}.min_class_images={p.min_class_images} images" if p.min_class_images else ""
        if len(self.drawable) < p.min_ways:
            return (f"{key}.min_ways={p.min_ways} exceeds the {len(self.drawable)} classes of {what}{fewer}; lower "
                    f"{key}.min_ways to at most {len(self.drawable)}")
        if self.kind == "bilevel" and p.min_class_images > 0:
            return (f"{key}.min_class_images={p.min_class_images} cannot be used with the bilevel hierarchy of {what} "
                    f"(as in the official sampler); set it to 0 or set {key}.ignore_bilevel=true")
        small = [c for c in self.drawable if sizes[c] < 2]
        if small:
            return (f"{len(small)} classes of {what} (class {small[0]} first) have fewer than 2 images, and an episode "
                    f"takes a support and a query image from each class; set {key}.min_class_images=2 to skip them"
                    + (f" and {key}.ignore_bilevel=true" if self.kind == "bilevel" else ""))
        bilevel = hierarchy.nodes if self.kind == "bilevel" else ()
        narrow = [i for i, node in enumerate(bilevel) if len(node) < p.min_ways]
        if narrow:
            name = hierarchy.names[narrow[0]] if hierarchy.names else narrow[0]
            return (f"{key}.min_ways={p.min_ways} exceeds the {len(bilevel[narrow[0]])} classes of superclass {name} "
                    f"of {what}, and the bilevel draw needs every superclass to fill an episode; lower "
                    f"{key}.min_ways or set {key}.ignore_bilevel=true")
        if self.kind == "dag" and not self.hierarchical:
            return (f"no node of the class hierarchy of {what} spans between {key}.min_ways={p.min_ways} and "
                    f"{MAX_SPANNING_LEAVES_ELIGIBLE} classes{fewer}; lower {key}.min_ways or set {key}.ignore_dag=true")
        most = min(p.max_ways, max(len(node) for node in nodes))
        if p.max_support < most:
            return (f"{key}.max_support={p.max_support} is below the {most} ways an episode of {what} can have, and "
                    f"each class needs a support image; raise it to at least {most} or lower {key}.max_ways")
        return None

    def check(self) -> None:
        """Raise ValueError when the split cannot supply episodes under the protocol."""
        if self.problem:
            raise ValueError(self.problem)

    def draw(self, num_tasks: int, generator: torch.Generator) -> tuple:
        """``num_tasks`` episodes as store rows and labels, a pure function of ``generator``'s state.

        Returns:
            (support_rows, support_labels, query_rows, query_labels): int64 [T, S_max] and [T, Q_max] on the
            device, S_max and Q_max the largest sizes of the meta-batch; labels 0..N-1 class-major, and past a
            task's own size label PAD (-1) and row 0.
        """
        self.check()
        # per task: node, hierarchy or not, ways, beta (support-set size), then one log-weight per class
        uniforms = torch.rand(num_tasks, 4 + self.ways, generator=generator, device=self.device, dtype=torch.float64)
        classes, ways = self.pick_classes(uniforms, generator)
        undrawn = None if self.fixed_ways else self.class_index >= ways  # [T, W]: slots past the episode's ways
        images = self.counts[classes]
        shots, queries = self.composition(images, ways, undrawn, uniforms[:, 3:4], uniforms[:, 4:])
        taken = shots + queries if undrawn is None else (shots + queries).masked_fill_(undrawn, 0)
        # the one host sync: the sizes of the meta-batch's tensors
        sizes = torch.cat([shots.sum(1, keepdim=True), queries * ways, taken], 1).amax(0).tolist()
        positions = self.pick_positions(images, max(sizes[2:]), generator)
        rows = self.offsets[classes].unsqueeze(-1) + positions  # [T, W, images taken per class]
        return self.assemble(rows, shots, queries, taken, *sizes[:2])

    def pick_classes(self, uniforms: torch.Tensor, generator: torch.Generator) -> tuple:
        """([T, W] classes, the first ways of each task drawn, the rest filler; [T, 1] ways, or an int when the
        protocol fixes them) from the uniforms of ``draw`` (node, hierarchy or not, ways)."""
        # the smallest keys of the node's classes: a uniformly random set in random order; padding never wins
        keys = torch.rand(len(uniforms), self.members.shape[1], generator=generator, device=self.device)
        if len(self.members) == 1:
            node, classes = 0, self.members[0][keys.topk(self.ways, largest=False).indices]
        else:
            # a node uniformly among the hierarchy's
            node = (uniforms[:, 0] * self.hierarchical).long()
            if self.flat_share > 0:  # the node of every class, last, for ignore_hierarchy_probability
                node.masked_fill_(uniforms[:, 1] < self.flat_share, self.hierarchical)
            keys.masked_fill_(self.padding[node], 2.0)
            classes = self.members[node].gather(1, keys.topk(self.ways, largest=False).indices)
        if self.fixed_ways:
            return classes, self.fixed_ways
        return classes, (self.low[node] + (uniforms[:, 2] * self.spread[node]).long()).view(-1, 1)

    def composition(self, images: torch.Tensor, ways, undrawn, beta: torch.Tensor, logits: torch.Tensor) -> tuple:
        """([T, W] shots per class, 0 past the ways; [T, 1] queries per class) of episodes whose classes hold
        ``images`` (steps 2-4), from [T, 1] and [T, W] uniforms."""
        p = self.protocol
        if undrawn is not None:
            images = images.masked_fill(undrawn, 2 * p.max_queries)  # filler never bounds the queries
        queries = images.amin(1, keepdim=True).div_(2, rounding_mode="floor").clamp_(max=p.max_queries)
        remaining = images - queries
        # sample_support_set_size
        each = remaining.clamp(max=p.max_support_per_class).mul(beta).add_(1).floor_()
        size = masked(each, undrawn).sum(1, keepdim=True).clamp_(max=p.max_support)
        # sample_num_support_per_class
        weight = masked(logits.mul(p.max_log_weight - p.min_log_weight).add_(p.min_log_weight).exp_().mul_(images),
                        undrawn)
        share = weight / weight.sum(1, keepdim=True)
        shots = share.mul_(size - ways).floor_().long().add_(1)
        return masked(torch.minimum(shots, remaining), undrawn), queries

    def pick_positions(self, images: torch.Tensor, per_class: int, generator: torch.Generator) -> torch.Tensor:
        """[T, W, per_class] distinct positions inside classes of ``images`` images: the smallest of random keys,
        keys past a class's end never winning."""
        keys = torch.rand(*images.shape, self.max_count, generator=generator, device=self.device)
        if not self.even:
            keys.masked_fill_(self.positions >= images.unsqueeze(-1), 2.0)
        return keys.topk(per_class, largest=False).indices

    def assemble(self, rows: torch.Tensor, shots: torch.Tensor, queries: torch.Tensor, taken: torch.Tensor,
                 support_size: int, query_size: int) -> tuple:
        """(support_rows, support_labels, query_rows, query_labels) of [T, W, K] ``rows``: each class's first
        shots images go to the support set, the next queries to the query set, class-major."""
        num_tasks, ways, per_class = rows.shape
        within, before = self.positions[:per_class], shots.unsqueeze(-1)
        start = shots.cumsum(1).unsqueeze(-1) - before
        after = (self.class_index * queries).unsqueeze(-1) - before + support_size  # query slots follow support's
        slot = torch.where(within < before, start, after).add_(within)
        # images past a class's share go to a last slot that is cut off
        slot = slot.masked_fill_(within >= taken.unsqueeze(-1), support_size + query_size).flatten(1)
        width = (num_tasks, support_size + query_size + 1)
        out_rows = torch.zeros(width, dtype=torch.int64, device=self.device).scatter_(1, slot, rows.flatten(1))
        labels = self.class_index.repeat_interleave(per_class).expand(num_tasks, -1)
        out_labels = torch.full(width, PAD, device=self.device).scatter_(1, slot, labels)
        return (out_rows[:, :support_size], out_labels[:, :support_size],
                out_rows[:, support_size:-1], out_labels[:, support_size:-1])


def masked(values: torch.Tensor, undrawn) -> torch.Tensor:
    """``values`` zeroed (in place) past each episode's ways, unchanged when every episode fills every slot."""
    return values if undrawn is None else values.masked_fill_(undrawn, 0)


def ignored(kind: str, protocol: VariableEpisodesConfig) -> bool:
    """Whether the protocol draws classes without a hierarchy of ``kind`` (``ignore_*_ontology``)."""
    return protocol.ignore_dag if kind == "dag" else protocol.ignore_bilevel


def hierarchy_nodes(hierarchy: Hierarchy, sizes: list, protocol: VariableEpisodesConfig) -> list:
    """The hierarchy's nodes an episode may draw from, as lists of classes (``EpisodeDescriptionSampler.__init__``):
    every superclass with all its classes; the DAG nodes spanning between min_ways and 392 drawable leaves."""
    if hierarchy.kind == "bilevel":
        return [list(node) for node in hierarchy.nodes]
    spans = ([c for c in node if sizes[c] >= protocol.min_class_images] for node in hierarchy.nodes)
    return [span for span in spans if protocol.min_ways <= len(span) <= MAX_SPANNING_LEAVES_ELIGIBLE]

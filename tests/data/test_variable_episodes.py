"""VariableEpisodes against the formulas of Meta-Dataset's official sampler, on synthetic splits.

Each distribution is compared with its formula by ``consistent``: every bin's count within 5 binomial standard
deviations of its expectation (fixed seeds, so a pass never turns into a chance failure), and each test also
shows that the same statistic rejects a plausible wrong formula.
"""

import math

import numpy
import pytest
import torch

from metarun.config.datasets import VariableEpisodesConfig
from metarun.data.sampling.sampler import class_groups
from metarun.data.sampling.variable_episodes import Hierarchy, VariableEpisodes

SIGMAS = 5.0


def sampler(counts: list, hierarchy: Hierarchy = None, device: str = "cpu", **protocol) -> VariableEpisodes:
    """A sampler of a split whose classes hold ``counts`` images, under the default protocol changed by ``protocol``."""
    counts = torch.tensor(counts)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    return VariableEpisodes(counts, offsets, hierarchy, VariableEpisodesConfig(**protocol), torch.device(device),
                            what="the test split of synthetic")


def episodes(source: VariableEpisodes, num_tasks: int, seed: int = 0) -> dict:
    """``num_tasks`` episodes and what they are made of: ways [T], shots [T, W] (0 past the ways), queries
    per class [T], classes [T, W] (-1 past the ways) and the class sizes [T, W]."""
    support_rows, support_labels, query_rows, query_labels = source.draw(num_tasks, torch.Generator().manual_seed(seed))
    ways = support_labels.max(1).values + 1
    width = int(ways.max())
    shots = (support_labels.unsqueeze(-1) == torch.arange(width)).sum(1)
    first = (shots.cumsum(1) - shots).clamp(max=support_rows.shape[1] - 1)
    drawn = torch.arange(width) < ways.unsqueeze(1)
    classes = class_of(source, support_rows.gather(1, first)).masked_fill(~drawn, -1)
    return {"source": source, "rows": (support_rows, query_rows), "labels": (support_labels, query_labels),
            "ways": ways, "shots": shots, "queries": (query_labels >= 0).sum(1) // ways, "classes": classes,
            "images": source.counts[classes.clamp(min=0)].masked_fill(~drawn, 0), "drawn": drawn}


def class_of(source: VariableEpisodes, rows: torch.Tensor) -> torch.Tensor:
    """The class owning each store row."""
    return torch.searchsorted(source.offsets, rows, right=True) - 1


def consistent(observed: torch.Tensor, probabilities) -> bool:
    """Whether every bin of the histogram ``observed`` lies within SIGMAS binomial deviations of its expected count
    (a bin of probability 0 must stay empty)."""
    probabilities = torch.as_tensor(probabilities, dtype=torch.float64)
    total = observed.sum()
    expected = total * probabilities
    spread = (total * probabilities * (1 - probabilities)).sqrt()
    impossible = (probabilities == 0) & (observed > 0)
    return bool(not impossible.any() and ((observed - expected).abs() <= SIGMAS * spread).all())


def histogram(values: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """Counts of each integer in [low, high] among ``values`` (values outside land in an extra last bin)."""
    inside = (values >= low) & (values <= high)
    return torch.bincount(torch.where(inside, values - low, high - low + 1), minlength=high - low + 2)


def uniform(low: int, high: int, bins_low: int, bins_high: int) -> list:
    """Probabilities of the bins [bins_low, bins_high] (+ an outside bin) under the uniform law on [low, high]."""
    return [1 / (high - low + 1) if low <= v <= high else 0.0 for v in range(bins_low, bins_high + 1)] + [0.0]


SIZES = [2, 3, 5, 8, 13, 21, 30, 41, 60] * 4  # 36 classes of varied sizes


def test_ways_are_uniform_up_to_max_ways_or_the_classes():
    ways = episodes(sampler(SIZES, min_ways=5, max_ways=12), 4000)["ways"]
    assert consistent(histogram(ways, 5, 13), uniform(5, 12, 5, 13))
    assert not consistent(histogram(ways, 5, 13), uniform(5, 13, 5, 13))  # max_ways + 1
    assert not consistent(histogram(ways, 5, 13), uniform(6, 12, 5, 13))  # min_ways + 1
    few = episodes(sampler([20] * 8, min_ways=5, max_ways=50), 2000)["ways"]
    assert consistent(histogram(few, 5, 9), uniform(5, 8, 5, 9))
    assert not consistent(histogram(few, 5, 9), uniform(5, 7, 5, 9))


def test_queries_per_class_are_half_the_smallest_class_at_most_max_queries():
    batch = episodes(sampler([5, 9, 13, 17, 23, 30, 45, 60, 80, 100] * 4, max_ways=8), 2000)
    smallest = batch["images"].masked_fill(~batch["drawn"], 10**6).amin(1)
    assert torch.equal(batch["queries"], (smallest // 2).clamp(max=10))  # compute_num_query
    assert not torch.equal(batch["queries"], (smallest * 2 // 5).clamp(max=10))  # floor(0.4 n) is rejected
    assert not torch.equal(batch["queries"], (smallest // 2).clamp(max=9))


def test_support_set_size_within_official_bounds():
    # sample_support_set_size: N <= S = min(max_support, sum_c floor(beta min(100, r_c) + 1)) <= sum_c min(100, r_c)
    batch = episodes(sampler(SIZES, max_support=120), 2000)
    remaining = (batch["images"] - batch["queries"].unsqueeze(1)) * batch["drawn"]
    total = batch["shots"].sum(1)
    assert (total >= batch["ways"]).all() and (total <= 120).all()
    assert (total <= remaining.clamp(max=100).sum(1)).all()
    assert (remaining.clamp(max=100).sum(1) > 120).any()  # max_support is the tighter bound somewhere


def test_support_set_size_is_uniform_per_class_up_to_its_contribution():
    # 5 classes of r = 440 remaining images each adding at most 20: S / 5 = floor(beta 20 + 1) is uniform on 1..20,
    # read back as ceil(total / 5) since the shots (never capped by r here) sum to between S - 4 and S
    batch = episodes(sampler([450] * 20, min_ways=5, max_ways=5, max_support_per_class=20), 4000)
    level = -torch.div(-batch["shots"].sum(1), 5, rounding_mode="floor")
    assert consistent(histogram(level, 1, 30), uniform(1, 20, 1, 30))
    assert not consistent(histogram(level, 1, 30), uniform(1, 21, 1, 30))  # ceil(beta c) + 1
    assert not consistent(histogram(level, 1, 30), uniform(2, 20, 1, 30))  # at least 2 per class


def test_composition_matches_the_official_functions_where_the_remaining_images_bind():
    # classes of 30 images: q = 10 and r = 20 bind both the support-set size and the shots; the official
    # functions, ported to numpy below, give the law of the support-set size to compare with
    source = sampler([30] * 20, min_ways=5, max_ways=5)
    total = episodes(source, 4000)["shots"].sum(1)
    rng = numpy.random.RandomState(0)
    official = torch.tensor([official_shots(numpy.full(5, 30), rng).sum() for _ in range(4000)])
    bins = torch.arange(0, 110, 5)
    assert same_law(torch.bucketize(total, bins), torch.bucketize(official, bins), len(bins) + 1)
    by_images = torch.tensor([official_shots(numpy.full(5, 30), rng, contribution_of_all=True).sum()
                              for _ in range(4000)])
    assert not same_law(torch.bucketize(total, bins), torch.bucketize(by_images, bins), len(bins) + 1)


def official_shots(images, rng, contribution_of_all: bool = False):
    """meta_dataset.data.sampling's compute_num_query, sample_support_set_size and sample_num_support_per_class
    with the default protocol (``contribution_of_all``: the wrong formula min(100, n_c) for min(100, r_c))."""
    queries = min(10, (images // 2).min())
    remaining = images - queries
    contributions = numpy.minimum(100, images if contribution_of_all else remaining)
    size = min(numpy.floor(rng.uniform() * contributions + 1).sum(), 500)
    weights = images * numpy.exp(rng.uniform(math.log(0.5), math.log(2), size=images.shape))
    shares = weights / weights.sum()
    return numpy.minimum(numpy.floor(shares * (size - len(images))).astype("int32") + 1, remaining)


def same_law(first: torch.Tensor, second: torch.Tensor, bins: int) -> bool:
    """Whether two samples of bin indices have every bin's share within SIGMAS deviations of each other."""
    a, b = (torch.bincount(x, minlength=bins).double() for x in (first, second))
    pooled = (a + b) / (len(first) + len(second))
    spread = (pooled * (1 - pooled) * (1 / len(first) + 1 / len(second))).sqrt()
    return bool(((a / len(first) - b / len(second)).abs() <= SIGMAS * spread + 1e-12).all())


def test_every_class_has_a_shot_and_no_more_than_its_remaining_images():
    batch = episodes(sampler(SIZES, min_ways=5, max_ways=30, max_support=500), 2000)
    remaining = batch["images"] - batch["queries"].unsqueeze(1)
    drawn = batch["drawn"]
    assert (batch["shots"][drawn] >= 1).all() and (batch["shots"][drawn] <= remaining[drawn]).all()
    assert (batch["shots"][drawn] == remaining[drawn]).any()  # the cap binds somewhere, so it is tested
    assert (batch["shots"][~drawn] == 0).all()


def log_shares(batch: dict) -> torch.Tensor:
    """[T, N] log of each class's proportional part of the support set, floor(p_c (S - N)) = k_c - 1, read as
    log(k_c - 1/2)."""
    return (batch["shots"].double() - 0.5).log()


def test_class_weights_are_log_uniform_between_half_and_twice():
    # equal classes: log p_c = u_c + const, so the spread of log shares within an episode is Var(u) = (log 4)^2 / 12
    batch = episodes(sampler([450] * 30, min_ways=5, max_ways=5, max_support=200), 3000)
    full = batch["shots"].sum(1) >= 190  # the episodes with S = 200, so that flooring barely matters
    spread = log_shares(batch)[full].var(1)
    expected, deviation = math.log(4) ** 2 / 12, spread.std() / math.sqrt(len(spread))
    assert abs(spread.mean() - expected) < SIGMAS * deviation + 0.002  # + the flooring's bias
    wrong = math.log(9) ** 2 / 12  # log-weights in [log 1/3, log 3]
    assert abs(spread.mean() - wrong) > SIGMAS * deviation + 0.002


def test_support_shares_follow_the_class_sizes():
    # sample_num_support_per_class weighs each class by its images: classes three times larger get three times the
    # shots on average (log 3 apart), on top of the log-uniform noise (mean 0)
    batch = episodes(sampler([150, 450] * 10, min_ways=4, max_ways=4, max_support=200), 4000)
    big = batch["images"] == 450
    mixed = (batch["shots"].sum(1) >= 190) & big.any(1) & (~big).any(1)
    shares = log_shares(batch)
    gap = (shares * big).sum(1) / big.sum(1) - (shares * ~big).sum(1) / (~big).sum(1)
    gap = gap[mixed]
    deviation = gap.std() / math.sqrt(len(gap))
    assert abs(gap.mean() - math.log(3)) < SIGMAS * deviation + 0.01
    assert abs(gap.mean() - 0.0) > SIGMAS * deviation + 0.01  # shares blind to the class sizes are rejected


def test_bilevel_episodes_stay_in_one_superclass_with_ways_uniform_within_it():
    groups = torch.tensor([0] * 6 + [1] * 10 + [2] * 30)
    hierarchy = Hierarchy.from_groups(groups)
    batch = episodes(sampler([20] * 46, hierarchy, min_ways=5, max_ways=12), 6000)
    drawn = batch["drawn"]
    group = groups[batch["classes"].clamp(min=0)]
    assert ((group == group[:, :1]) | ~drawn).all()  # one superclass per episode
    superclass = group[:, 0]
    assert consistent(torch.bincount(superclass, minlength=3), [1 / 3] * 3)  # uniform, not by size
    assert not consistent(torch.bincount(superclass, minlength=3), [6 / 46, 10 / 46, 30 / 46])
    for index, size in enumerate((6, 10, 30)):
        ways = histogram(batch["ways"][superclass == index], 5, 13)
        assert consistent(ways, uniform(5, min(12, size), 5, 13))
    assert not consistent(histogram(batch["ways"][superclass == 0], 5, 13), uniform(5, 12, 5, 13))


def test_ignoring_the_hierarchy_draws_that_share_of_episodes_across_superclasses():
    groups = torch.tensor([0] * 20 + [1] * 20)
    hierarchy = Hierarchy.from_groups(groups)
    batch = episodes(sampler([20] * 40, hierarchy, min_ways=5, max_ways=12, ignore_hierarchy_probability=0.3), 4000)
    group = groups[batch["classes"].clamp(min=0)]
    mixed = torch.bincount(((group != group[:, :1]) & batch["drawn"]).any(1).long(), minlength=2)
    # a flat episode of N classes lies in one superclass with probability 2 C(20, N) / C(40, N)
    apart = 1 - sum(2 * math.comb(20, n) / math.comb(40, n) for n in range(5, 13)) / 8
    assert consistent(mixed, [1 - 0.3 * apart, 0.3 * apart])
    assert not consistent(mixed, [1 - 0.7 * apart, 0.7 * apart])  # the probability of keeping the hierarchy
    flat = episodes(sampler([20] * 40, hierarchy, ignore_bilevel=True, min_ways=5, max_ways=40), 500)
    assert (flat["ways"] > 20).any()


def test_dag_episodes_take_the_leaves_of_one_eligible_node_capped_at_max_ways():
    counts = [20] * 60 + [1] * 4 + [20] * 400
    nodes = (tuple(range(10)), tuple(range(5, 25)), tuple(range(20, 60)),  # 10, 20 and 40 leaves: eligible
             (0, 1, 2), tuple(range(56, 64)),  # 3 leaves, and 4 + 4 of a single image: too few drawable leaves
             tuple(range(64, 464)))  # 400 leaves, more than MAX_SPANNING_LEAVES_ELIGIBLE
    source = sampler(counts, Hierarchy("dag", nodes), min_ways=5, max_ways=30, min_class_images=2)
    batch = episodes(source, 3000)
    ways = batch["ways"]
    assert consistent(histogram(ways, 10, 30), [1 / 3 if v in (10, 20, 30) else 0.0 for v in range(10, 31)] + [0.0])
    assert not consistent(histogram(ways, 10, 30), [1 / 4 if v in (10, 20, 30) else 0.0 for v in range(10, 30)]
                          + [1 / 4, 0.0])  # the 400-leaf node capped at 30 would add to 30
    for size, node in ((10, nodes[0]), (20, nodes[1]), (30, nodes[2])):
        chosen = batch["classes"][ways == size][:, :size]
        assert torch.isin(chosen, torch.tensor(node)).all()  # the leaves of that node, a subset of 30 of the 40
    leaves = batch["classes"][ways == 30][:, :30]
    assert consistent(torch.bincount(leaves.flatten() - 20, minlength=40), [30 / 40 / 30] * 40)


def test_labels_class_major_images_disjoint_and_padding():
    batch = episodes(sampler(SIZES, min_ways=5, max_ways=20), 300)
    (support_rows, query_rows), (support_labels, query_labels) = batch["rows"], batch["labels"]
    for t in range(300):
        ways, shots, queries = int(batch["ways"][t]), batch["shots"][t], int(batch["queries"][t])
        size = int(shots.sum())
        assert torch.equal(support_labels[t, :size], torch.arange(ways).repeat_interleave(shots[:ways]))
        assert torch.equal(query_labels[t, :ways * queries], torch.arange(ways).repeat_interleave(queries))
        assert (support_labels[t, size:] == -1).all() and (support_rows[t, size:] == 0).all()
        assert (query_labels[t, ways * queries:] == -1).all() and (query_rows[t, ways * queries:] == 0).all()
        rows = torch.cat([support_rows[t, :size], query_rows[t, :ways * queries]])
        assert len(rows.unique()) == len(rows)  # support and query never share an image
        labels = torch.cat([support_labels[t, :size], query_labels[t, :ways * queries]])
        # one class per label, distinct classes per episode
        assert torch.equal(class_of(batch["source"], rows), batch["classes"][t][labels])
        assert len(batch["classes"][t][:ways].unique()) == ways


def test_same_generator_state_gives_the_same_episodes():
    source = sampler(SIZES, Hierarchy.from_groups(torch.arange(36) // 9), min_ways=3, ignore_hierarchy_probability=0.3)
    first = source.draw(16, torch.Generator().manual_seed(5))
    again = source.draw(16, torch.Generator().manual_seed(5))
    other = source.draw(16, torch.Generator().manual_seed(6))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other))
    assert all(t.dtype == torch.int64 for t in first)


def test_fixed_ways_one_shot_protocol_draws_images_uniformly():
    batch = episodes(sampler([20] * 100, min_ways=5, max_ways=5, max_support=5), 2000)
    assert (batch["ways"] == 5).all() and (batch["shots"] == 1).all() and (batch["queries"] == 10).all()
    (support, query), classes = batch["rows"], batch["classes"]
    assert support.shape == (2000, 5) and query.shape == (2000, 50)
    # the support image is any of its class's 20, not the first of the images drawn in index order
    position = (support - batch["source"].offsets[classes]).flatten()
    assert consistent(torch.bincount(position, minlength=20), [1 / 20] * 20)
    lowest = [math.comb(19 - i, 10) / math.comb(20, 11) for i in range(20)]  # the smallest of 11 distinct positions
    assert not consistent(torch.bincount(position, minlength=20), lowest)


def test_from_groups_makes_alphabets_superclasses():
    names = ("Greek/c1", "Latin/c1", "Greek/c2", "Latin/c2", "Greek/c3")
    _, groups = class_groups(names, "train", torch.device("cpu"))
    assert Hierarchy.from_groups(groups) == Hierarchy("bilevel", ((0, 2, 4), (1, 3)))
    with pytest.raises(ValueError, match="Hierarchy.kind"):
        Hierarchy("tree", ())


@pytest.mark.parametrize("counts,hierarchy,protocol,message", [
    ([20] * 3, None, {}, r"dataset.variable.min_ways=5 exceeds the 3 classes of the test split of synthetic; lower"),
    ([20] * 6 + [1], None, {}, r"1 classes .* fewer than 2 images.*dataset.variable.min_class_images=2"),
    ([20] * 4 + [2] * 3, None, {"min_class_images": 3}, r"min_ways=5 exceeds the 4 classes .*min_class_images=3 imag"),
    ([20] * 9, Hierarchy("bilevel", (tuple(range(6)), (6, 7, 8))), {},
     r"min_ways=5 exceeds the 3 classes of superclass 1 .* dataset.variable.ignore_bilevel=true"),
    ([20] * 9, Hierarchy("bilevel", (tuple(range(6)), (6, 7, 8)), ("Greek", "Tifinagh")), {},
     r"exceeds the 3 classes of superclass Tifinagh of the test split of synthetic"),
    ([20] * 9, Hierarchy("bilevel", (tuple(range(9)),)), {"min_class_images": 2}, r"min_class_images=2 cannot be"),
    ([20] * 9, Hierarchy("dag", ((0, 1, 2), (3, 4))), {}, r"no node .* dataset.variable.ignore_dag=true"),
    ([20] * 9, None, {"max_support": 7}, r"dataset.variable.max_support=7 is below the 9 ways"),
])
def test_check_names_the_key_and_the_fix(counts, hierarchy, protocol, message):
    source = sampler(counts, hierarchy, **protocol)
    with pytest.raises(ValueError, match=message):
        source.check()
    with pytest.raises(ValueError, match=message):
        source.draw(1, torch.Generator().manual_seed(0))


def test_ignored_hierarchies_and_valid_splits_pass_the_check():
    sampler([20] * 9, Hierarchy("dag", ((0, 1, 2), (3, 4))), ignore_dag=True).check()
    sampler([20] * 9, Hierarchy("bilevel", (tuple(range(6)), (6, 7, 8))), ignore_bilevel=True).check()
    with pytest.raises(ValueError, match="dataset.variable.max_ways=4 is below dataset.variable.min_ways=5"):
        sampler([20] * 9, max_ways=4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_episodes_are_drawn_on_the_gpu():
    source = sampler(SIZES, Hierarchy.from_groups(torch.arange(36) // 9), "cuda", min_ways=3)
    generator = torch.Generator(device="cuda")
    first = source.draw(32, generator.manual_seed(0))
    assert all(t.device.type == "cuda" for t in first)
    assert all(torch.equal(a, b) for a, b in zip(first, source.draw(32, generator.manual_seed(0))))
    support_rows, support_labels, query_rows, query_labels = (t.cpu() for t in first)
    assert ((support_labels >= 0) | (support_rows == 0)).all() and (query_labels.max(1).values >= 2).all()

"""The one way a config names its implementation: ``_target_``, an import path. metarun's own options and a
user's module are found alike (``algo._target_: my_algo.ALGORITHM``, run from the folder that holds
``my_algo.py`` or with it on PYTHONPATH); models are instantiated from theirs (``metarun.models.build_model``)."""

from hydra.utils import get_object

from metarun.utils.errors import first_line


def locate(node, group: str, kind: type):
    """The ``kind`` object that ``<group>._target_`` of ``node`` names.

    Raises:
        ValueError: no ``_target_``, an import path that does not import, or an object of another type.
    """
    target = node.get("_target_")
    if not target:
        raise ValueError(f"{group}._target_ is not set; name the {kind.__name__} to run, e.g. "
                         f"{group}._target_=my_module.{kind.__name__.upper()}")
    try:
        found = get_object(target)
    except Exception as err:  # noqa: BLE001 - Hydra wraps a missing module, a missing name and a failing import alike
        cause = err.__cause__ or err
        raise ValueError(f"{group}._target_={target} cannot be imported ({cause.__class__.__name__}: "
                         f"{first_line(cause)}); run metarun from the folder that "
                         "holds its module or add that folder to PYTHONPATH") from err
    if not isinstance(found, kind):
        raise ValueError(f"{group}._target_={target} is a {type(found).__name__}, not a {kind.__module__}."
                         f"{kind.__name__}; point it at one (e.g. {target.rpartition('.')[0]}.{kind.__name__.upper()})")
    return found

"""CUB-200-2011 (Wah, Branson, Welinder, Perona & Belongie, 2011, "The Caltech-UCSD Birds-200-2011 Dataset",
Caltech CNS-TR-2011-001): 11,788 photographs of 200 bird species, with the split of Chen et al. (2019, "A Closer
Look at Few-shot Classification", ICLR): 100 species for meta-train, 50 for validation, 50 for meta-test.

Split: Chen et al.'s rule (their filelists/CUB/write_CUB_filelist.py) over the 200 class folders ``CLASSES`` in
sorted order, index i: i % 2 == 0 meta-train, i % 4 == 1 validation, i % 4 == 3 meta-test. It gives exactly
torchmeta's assets/cub/{train,val,test}.json. (learn2learn reads the same 200 folders but splits them 140/30/30 as
Meta-Dataset does; that split is not this one.)

Files under ``dataset.root``, the first present taken for each split:
    tgz     the official CUB_200_2011.tgz, read in place: members CUB_200_2011/images/<NNN.Name>/<image>.jpg;
            while a split decodes, its JPEG files are held in memory (about 0.6 GB for meta-train);
    folder  that archive extracted: CUB_200_2011/images/<NNN.Name>/*.jpg, in ``root`` or in ``root/cubirds200``
            (where learn2learn extracts it);
    hdf5    torchmeta's {train,val,test}_data.hdf5: ``datasets/<NNN.Name>``, one encoded JPEG (vlen uint8) per
            image, in sorted file order (needs h5py; the _labels.json files are not read: the split is the rule's).
With ``dataset.download`` and none of them there, the archive is fetched from its official address (1.1 GB,
md5-checked); without it, the error names the file, the address and where to put it.

Images: each whole photograph, squashed to ``image_size`` (84) with antialiasing; the bounding boxes are not used.
Chen et al. also take the whole photograph: at evaluation squashed to 96x96 (1.15 x 84) and centre-cropped to 84,
in training with augmentation a random-resized 84x84 crop, colour jitter and a flip (``dataset.augment`` here is a
padded random crop and a flip instead). Greyscale photographs become RGB. Normalisation: the ImageNet mean and
std, as in Chen et al.'s code. Each split is decoded once into an ImageStore cached as
``<dataset.cache_dir>/cub-<split>-<size>px-<fingerprint of its files>.store``.
"""

import io
import tarfile
import zlib
from pathlib import Path

import torch
from PIL import Image

from metarun.config.datasets import CUBConfig
from metarun.data import Dataset
from metarun.data.files.download import download as fetch
from metarun.data.files.imagefiles import decode_classes, is_image, read_tar, require_h5py
from metarun.data.files.store import ImageStore, cached_store, fingerprint
from metarun.data.sampling.image_tasks import ImageTasks
from metarun.utils.disk import exists
from metarun.utils.errors import RunError

URL = "https://data.caltech.edu/records/65de6-vzc47/files/CUB_200_2011.tgz?download=1"
MD5 = "97eceeb196236b17998738112f37df78"
ARCHIVE = "CUB_200_2011.tgz"
IMAGES = "CUB_200_2011/images"  # the class folders, in the archive and extracted
EXTRACTED = ("", "cubirds200")  # where an extracted archive may sit under root: as extracted, or learn2learn's place
SPLITS = ("train", "val", "test")
# Chen et al.'s code normalises with the ImageNet statistics
NORMALISATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# the species in the order of their folder numbers, 001 to 200
SPECIES = """
Black_footed_Albatross Laysan_Albatross Sooty_Albatross Groove_billed_Ani Crested_Auklet Least_Auklet Parakeet_Auklet
Rhinoceros_Auklet Brewer_Blackbird Red_winged_Blackbird Rusty_Blackbird Yellow_headed_Blackbird Bobolink Indigo_Bunting
Lazuli_Bunting Painted_Bunting Cardinal Spotted_Catbird Gray_Catbird Yellow_breasted_Chat Eastern_Towhee
Chuck_will_Widow Brandt_Cormorant Red_faced_Cormorant Pelagic_Cormorant Bronzed_Cowbird Shiny_Cowbird Brown_Creeper
American_Crow Fish_Crow Black_billed_Cuckoo Mangrove_Cuckoo Yellow_billed_Cuckoo Gray_crowned_Rosy_Finch Purple_Finch
Northern_Flicker Acadian_Flycatcher Great_Crested_Flycatcher Least_Flycatcher Olive_sided_Flycatcher
Scissor_tailed_Flycatcher Vermilion_Flycatcher Yellow_bellied_Flycatcher Frigatebird Northern_Fulmar Gadwall
American_Goldfinch European_Goldfinch Boat_tailed_Grackle Eared_Grebe Horned_Grebe Pied_billed_Grebe Western_Grebe
Blue_Grosbeak Evening_Grosbeak Pine_Grosbeak Rose_breasted_Grosbeak Pigeon_Guillemot California_Gull
Glaucous_winged_Gull Heermann_Gull Herring_Gull Ivory_Gull Ring_billed_Gull Slaty_backed_Gull Western_Gull
Anna_Hummingbird Ruby_throated_Hummingbird Rufous_Hummingbird Green_Violetear Long_tailed_Jaeger Pomarine_Jaeger
Blue_Jay Florida_Jay Green_Jay Dark_eyed_Junco Tropical_Kingbird Gray_Kingbird Belted_Kingfisher Green_Kingfisher
Pied_Kingfisher Ringed_Kingfisher White_breasted_Kingfisher Red_legged_Kittiwake Horned_Lark Pacific_Loon Mallard
Western_Meadowlark Hooded_Merganser Red_breasted_Merganser Mockingbird Nighthawk Clark_Nutcracker
White_breasted_Nuthatch Baltimore_Oriole Hooded_Oriole Orchard_Oriole Scott_Oriole Ovenbird Brown_Pelican
White_Pelican Western_Wood_Pewee Sayornis American_Pipit Whip_poor_Will Horned_Puffin Common_Raven White_necked_Raven
American_Redstart Geococcyx Loggerhead_Shrike Great_Grey_Shrike Baird_Sparrow Black_throated_Sparrow Brewer_Sparrow
Chipping_Sparrow Clay_colored_Sparrow House_Sparrow Field_Sparrow Fox_Sparrow Grasshopper_Sparrow Harris_Sparrow
Henslow_Sparrow Le_Conte_Sparrow Lincoln_Sparrow Nelson_Sharp_tailed_Sparrow Savannah_Sparrow Seaside_Sparrow
Song_Sparrow Tree_Sparrow Vesper_Sparrow White_crowned_Sparrow White_throated_Sparrow Cape_Glossy_Starling
Bank_Swallow Barn_Swallow Cliff_Swallow Tree_Swallow Scarlet_Tanager Summer_Tanager Artic_Tern Black_Tern
Caspian_Tern Common_Tern Elegant_Tern Forsters_Tern Least_Tern Green_tailed_Towhee Brown_Thrasher Sage_Thrasher
Black_capped_Vireo Blue_headed_Vireo Philadelphia_Vireo Red_eyed_Vireo Warbling_Vireo White_eyed_Vireo
Yellow_throated_Vireo Bay_breasted_Warbler Black_and_white_Warbler Black_throated_Blue_Warbler Blue_winged_Warbler
Canada_Warbler Cape_May_Warbler Cerulean_Warbler Chestnut_sided_Warbler Golden_winged_Warbler Hooded_Warbler
Kentucky_Warbler Magnolia_Warbler Mourning_Warbler Myrtle_Warbler Nashville_Warbler Orange_crowned_Warbler
Palm_Warbler Pine_Warbler Prairie_Warbler Prothonotary_Warbler Swainson_Warbler Tennessee_Warbler Wilson_Warbler
Worm_eating_Warbler Yellow_Warbler Northern_Waterthrush Louisiana_Waterthrush Bohemian_Waxwing Cedar_Waxwing
American_Three_toed_Woodpecker Pileated_Woodpecker Red_bellied_Woodpecker Red_cockaded_Woodpecker
Red_headed_Woodpecker Downy_Woodpecker Bewick_Wren Cactus_Wren Carolina_Wren House_Wren Marsh_Wren Rock_Wren
Winter_Wren Common_Yellowthroat
"""
CLASSES = tuple(f"{number:03d}.{name}" for number, name in enumerate(SPECIES.split(), start=1))
# Chen et al.'s rule: (modulus, remainder) of a class's index among the sorted class folders
RULE = {"train": (2, 0), "val": (4, 1), "test": (4, 3)}


def split_classes(classes, split: str) -> tuple:
    """The classes of ``split`` among ``classes`` by Chen et al.'s rule, in sorted order."""
    modulus, remainder = RULE[split]
    return tuple(name for index, name in enumerate(sorted(classes)) if index % modulus == remainder)


def build(settings, device: torch.device) -> ImageTasks:
    """The CUB task source of a ``CUBConfig``: N-way K-shot episodes from its three splits."""
    stores = {split: load_split(settings.root, split, settings.image_size, settings.cache_dir, settings.download)
              for split in SPLITS}
    return ImageTasks.from_config(settings, stores, device, NORMALISATION)


def load_split(root: Path, split: str, image_size: int = 84, cache_dir=None, download: bool = False) -> ImageStore:
    """One split ("train", "val" or "test") of the CUB in ``root`` (the archive fetched first when ``download`` and
    nothing is there), decoded once into ``cache_dir`` under a fingerprint of its source files."""
    if split not in SPLITS:
        raise ValueError(f"CUB has no split {split!r}; use one of {', '.join(SPLITS)}")
    root = Path(root)
    read, source = find_source(root, split, download)
    cache = Path(cache_dir or root / ".metarun-cache") / f"cub-{split}-{image_size}px-{fingerprint(source)}.store"
    return cached_store(cache, lambda: decode_classes(read(source, split_classes(CLASSES, split)), image_size, _image,
                                                      f"CUB {split}"))


def find_source(root: Path, split: str, download: bool) -> tuple:
    """(reader, path) of the first format present in ``root`` for ``split``, downloading the archive if allowed."""
    candidates = [(root / ARCHIVE, _read_tgz), *((root / place / IMAGES, _read_folder) for place in EXTRACTED),
                  (root / f"{split}_data.hdf5", _read_hdf5)]
    found = next(((read, path) for path, read in candidates if exists(path)), None)
    if found:
        return found
    if download:
        return _read_tgz, fetch(URL, root / ARCHIVE, MD5)
    raise FileNotFoundError(
        f"no CUB-200-2011 in {root}: download {URL} (md5 {MD5}) and put it there as {ARCHIVE} (or its extracted "
        f"CUB_200_2011/, or torchmeta's {split}_data.hdf5), set dataset.download=true to fetch it, or set dataset.root"
    )


def folder_of(member: str) -> str:
    """The class folder of an archive member ``CUB_200_2011/images/<class>/<image>``."""
    return member.rpartition("/")[0].removeprefix(f"{IMAGES}/")


def _read_tgz(path: Path, classes: tuple) -> dict:
    """{class: [(name, JPEG bytes)]} of ``classes`` from the archive, read in one pass (a gzip stream cannot seek),
    each class's files sorted by name."""
    found = {name: [] for name in classes}
    try:
        for member, data in read_tar(path, lambda name: folder_of(name) in found and is_image(name)):
            found[folder_of(member)].append((f"{path}:{member}", data))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise RunError(f"cannot read {path} ({err.__class__.__name__}: {err}); it is truncated or corrupt: delete it "
                       f"and download it again from {URL} (md5 {MD5}), or set dataset.download=true") from err
    return _complete({name: sorted(images) for name, images in found.items()}, path, f"{IMAGES}/")


def _read_folder(path: Path, classes: tuple) -> dict:
    """{class: [(name, file path)]} of ``classes`` from the extracted ``CUB_200_2011/images``, sorted by name."""
    found = {}
    for name in classes:
        files = (path / name).iterdir() if (path / name).is_dir() else ()
        found[name] = sorted((str(file), file) for file in files if is_image(file.name))
    return _complete(found, path, "")


def _read_hdf5(path: Path, classes: tuple) -> dict:
    """{class: [(name, JPEG bytes)]} of ``classes`` from torchmeta's ``<split>_data.hdf5``, in its order (torchmeta
    stored each class's files sorted by name)."""
    h5py = require_h5py(path, f"{ARCHIVE} in {path.parent}")
    try:
        with h5py.File(path, "r") as data:
            group = data["datasets"]
            found = {name: [(f"{path}:datasets/{name}[{i}]", encoded.tobytes())
                            for i, encoded in enumerate(group[name] if name in group else ())] for name in classes}
    except (OSError, KeyError, ValueError) as err:
        raise RunError(f"cannot read torchmeta's {path} ({err.__class__.__name__}: {err}); it is truncated or corrupt: "
                       f"delete it and rebuild it with torchmeta, or put {ARCHIVE} in {path.parent} instead") from err
    return _complete(found, path, "datasets/")


def _complete(found: dict, source: Path, inside: str) -> dict:
    """``found`` ({class: images}), or an error naming the first class without images."""
    missing = [name for name, images in found.items() if not images]
    if missing:
        raise RunError(f"{source} has no images in {inside}{missing[0]}/ ({len(missing)} of this split's {len(found)} "
                       f"classes are missing); the dataset is incomplete: replace it with the whole {ARCHIVE} ({URL}), "
                       "extracted or not")
    return found


def _image(item: tuple) -> Image.Image:
    """A (name, JPEG bytes or file path) item as an RGB image; a damaged one is an error naming it."""
    name, data = item
    try:
        with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as image:
            return image.convert("RGB")  # decodes now, so a truncated file fails here, named; greyscale becomes RGB
    except (OSError, ValueError) as err:
        raise RunError(f"cannot decode the image {name} ({err.__class__.__name__}: {err}); it is truncated or corrupt: "
                       f"replace it from a fresh {ARCHIVE} ({URL}) and rerun") from err


DATASET = Dataset(build, CUBConfig)

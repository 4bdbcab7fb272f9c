__version__ = "0.1.0"
from . import core as _core   # first: its warning filters must precede the imports of fastai in every other module

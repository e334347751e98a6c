"""Every limit on what a model file may make kerasurgery read or allocate, once.

Each is checked before the bytes it bounds are read or the memory it bounds is
allocated: by the container checks (`kerasurgery.files.formats`), the layout
reader (`kerasurgery.files.layout`), the declared-size checks
(`kerasurgery.guards.declared`) and the counting build
(`kerasurgery.model.budget`).
"""

# DEFLATE cannot expand data by more than about 1032:1.
MAX_EXPANSION = 1032
# Caps checked before a member is read or parsed. The largest configs of real
# models are about 1 MB (Keras' NASNetLarge, 1041 layers: 1.0 MB, 20 000 JSON
# objects and lists, nested 7 deep; a KerasHub BERT or GPT-2 backbone: under
# 1 KB), so 16 MB leaves room for models 16 times larger while parsing the
# worst JSON of that size stays within a few hundred MB of memory.
MAX_CONFIG_BYTES = 16 << 20
MAX_JSON_CONTAINERS = 1 << 20  # objects and lists
MAX_JSON_DEPTH = 256  # below Python's recursion limit, far above any model
# metadata.json holds the Keras version and a date; Keras itself never reads it.
MAX_METADATA_BYTES = 1 << 20
# A `.keras` archive holds three or four members, plus assets (vocabularies).
# Keras reads an asset whole and splits it into Python strings (some 30 times
# its bytes for short lines): 64 MB caps that near 2 GB. Real ones are far
# smaller (a KerasHub BERT vocabulary 0.2 MB, GPT-2's merges and vocabulary
# 1.5 MB, a Gemma SentencePiece model 4 MB).
MAX_ASSET_BYTES = 64 << 20
# Keras rebuilds a Sequential model's graph at each layer it adds, so its
# load grows with the square of the layer count (300 weightless layers: 17 s
# on a 2-core machine). Real Sequential models have tens of layers; deep
# models are Functional.
MAX_SEQUENTIAL_LAYERS = 512
# Deeper than this, a file is built to exhaust the reader, not to hold a model.
MAX_LAYER_DEPTH = 64
MAX_MEMBERS = 10_000
# A reader of a chunked HDF5 dataset inflates a whole chunk at a time: a chunk
# may hold more bytes than its dataset's data only up to this (writers size
# chunks to the data; h5py's largest automatic chunk is 1 MB).
MAX_CHUNK_BYTES = 1 << 20
# Weight entries a config may declare beyond 4x those the file stores (e.g.
# the packed kernels of int4 layers) before it is refused: what Keras then
# allocates stays within 64 MB (float32) plus a small multiple of the file.
FREE_ENTRIES = 1 << 24
DECLARED_SLACK = 4

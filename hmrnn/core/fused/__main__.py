"""``python -m hmrnn.core.fused``: build (or load) the C++ cell and report the time it took."""

from hmrnn.core.fused.native import main

main()

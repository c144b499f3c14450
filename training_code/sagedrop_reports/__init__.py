"""Report rendering: the debug job's self-contained report.html and its SVG charts (standard
library only, so ``sagedrop report`` draws them too)."""

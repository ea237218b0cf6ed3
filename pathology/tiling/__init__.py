"""Tiling: the patch grid at a target µm/px, the fast patch reader, and one slide into a bag."""

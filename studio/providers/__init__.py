"""Image providers behind one seam, and the chain that tries them in order."""

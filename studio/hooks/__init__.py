"""Caption ("hook") writers behind one seam."""

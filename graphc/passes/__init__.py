"""Graph passes between autodiff and codegen: decompose, simplify, DCE, fuse, plan memory."""

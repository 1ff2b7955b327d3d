"""The graph IR: types, values, nodes, graphs; printing, JSON and verification."""

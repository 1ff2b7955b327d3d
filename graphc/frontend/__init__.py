"""The front end: .net source -> AST -> forward graph."""

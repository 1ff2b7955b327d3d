"""The lark grammar of the .net language (graphc.lark), shipped as package data."""

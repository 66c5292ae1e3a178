"""Pure analysis of a host's nginx configuration and minimal, byte-preserving text edits to it.

The configuration arrives as text (what certfab read, split per file). The parts:

- `model`: listens, server blocks, trees, preflight findings, how nginx resolves include paths;
- `lexer`: tokens and statements of one file, checked against crossplane, with byte offsets;
- `tree`: the include tree from the main file and the http server blocks in it;
- `select`: which block nginx picks for a host name, and `check_sites`, the preflight of sites;
- `edits`: the ACME include, the HTTPS conversion and certfab's redirect block.
"""

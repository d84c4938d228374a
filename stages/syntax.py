"""Parse checks with real tree-sitter grammars (tree-sitter-language-pack < 1 bundles them; nothing is
downloaded). A parser per grammar is built once per process."""

from functools import cache

from tree_sitter import Node, Parser
from tree_sitter_language_pack import get_parser

# linguist language -> tree-sitter-language-pack grammar. Languages whose grammars flag much valid
# code (SQL dialects, Markdown, HTML, TeX, Perl) are left out: their parse says little about quality.
GRAMMARS = {
    "C": "c", "C++": "cpp", "C#": "csharp", "Java": "java", "JavaScript": "javascript", "TypeScript": "typescript",
    "TSX": "tsx", "Go": "go", "Rust": "rust", "Ruby": "ruby", "PHP": "php", "Shell": "bash", "Lua": "lua",
    "Scala": "scala", "Kotlin": "kotlin", "Swift": "swift", "Haskell": "haskell", "JSON": "json", "YAML": "yaml",
    "TOML": "toml", "CSS": "css", "SCSS": "scss", "Cuda": "cuda", "Objective-C": "objc", "R": "r", "Julia": "julia",
    "Dart": "dart", "Elixir": "elixir", "Erlang": "erlang", "OCaml": "ocaml", "Zig": "zig", "CMake": "cmake",
    "Dockerfile": "dockerfile", "Clojure": "clojure", "Elm": "elm", "Groovy": "groovy", "Solidity": "solidity",
    "Verilog": "verilog", "Emacs Lisp": "elisp", "Common Lisp": "commonlisp", "Scheme": "scheme", "Nix": "nix",
    "HCL": "hcl", "GraphQL": "graphql", "Protocol Buffer": "proto", "PowerShell": "powershell", "Fish": "fish",
    "D": "d", "Nim": "nim", "Ada": "ada", "F#": "fsharp", "GLSL": "glsl", "HLSL": "hlsl", "Fortran": "fortran",
    "Fortran Free Form": "fortran", "Python": "python", "Starlark": "starlark",
}


@cache
def parser_for(grammar: str) -> Parser:
    return get_parser(grammar)


def error_bytes(root: Node) -> int:
    """Bytes of the tokens the grammar could not place: leaves inside ERROR nodes (complete, valid
    subtrees that error recovery wrapped in an ERROR node do not count, nor do comments) plus one per
    MISSING token. Only subtrees that hold errors are visited."""
    total = 0
    stack = [(root, False)]
    while stack:
        node, in_error = stack.pop()
        if node.is_missing:
            total += 1
            continue
        in_error = in_error or node.is_error
        for child in node.children:
            if child.child_count == 0 and not child.is_missing:
                if (in_error or child.is_error) and not child.is_extra:  # comments are never errors
                    total += child.end_byte - child.start_byte
            elif child.has_error:
                stack.append((child, in_error))
        if node.is_error and node.child_count == 0:
            total += max(1, node.end_byte - node.start_byte)
    return total


def syntax_error_fraction(raw: bytes, language: str) -> float:
    """Share of the file's bytes that the language's grammar cannot place in a valid tree."""
    tree = parser_for(GRAMMARS[language]).parse(raw)
    if not tree.root_node.has_error:
        return 0.0
    return min(1.0, error_bytes(tree.root_node) / max(len(raw), 1))


def has_syntax_error(text: str, language: str) -> bool:
    return parser_for(GRAMMARS[language]).parse(text.encode("utf-8", "surrogatepass")).root_node.has_error

"""Shell completion for bash and zsh, generated from the CLI's own argument parser.

``codex-supervisor completion bash`` (or ``zsh``) prints a script; nothing in it
is written by hand per command, so a new option or command completes as soon
as the parser has it. The script knows:

- the commands and actions at each level (``accounts`` -> ``login``, ...), with
  their help as descriptions in zsh;
- each level's options, and which take a value: folders for ``DIR``, files for
  ``FILE`` and ``BIN``, the choices of an option that has them;
- account names for an action's ``NAME``, asked of ``accounts list --names``
  on the pool the command line names (``--pool``), never read from files;
- that everything after ``run``'s own options is Codex's command line: files.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import attrs

# Files and folders in bash: one per line (names with spaces stay whole), quoted as names.
_BASH_FILES = 'compopt -o filenames; mapfile -t COMPREPLY < <(compgen -f -- "$cur")'
_BASH_DIRS = 'compopt -o filenames; mapfile -t COMPREPLY < <(compgen -d -- "$cur")'
#: The body of a bash helper: a word as typed, with its surrounding quotes taken off.
_BASH_UNQUOTE = r'''    local w="$1" q="'" d='"'
    w="${w#"$q"}"; w="${w%"$q"}"; w="${w#"$d"}"; w="${w%"$d"}"
    printf '%s' "$w"'''

#: How a value is completed, by the metavar the parser gives it.
_KINDS = {"DIR": "dir", "FILE": "file", "BIN": "file", "NAME": "account"}


@attrs.frozen
class _Option:
    flags: tuple[str, ...]
    takes_value: bool
    kind: str | None  # "dir", "file", "account", "choices" or None
    choices: tuple[str, ...]
    help: str


@attrs.frozen
class _Level:
    """One command level: its options, its sub-commands and what its positional takes."""

    path: str
    options: tuple[_Option, ...]
    commands: tuple[tuple[str, str], ...]  # (name, help)
    positional: str | None  # the kind of its first positional value, if any
    positional_choices: tuple[str, ...] = ()


def _help(text: str | None) -> str:
    text = re.sub(r"\s*\(default: %\(default\)s\)", "", text or "")
    return " ".join(text.replace("%(default)s", "").split())


def _levels(parser: argparse.ArgumentParser, path: str = "") -> Iterator[_Level]:
    options: list[_Option] = []
    commands: list[tuple[str, str]] = []
    positional: str | None = None
    positional_choices: tuple[str, ...] = ()
    children: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its actions there
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            helps = {a.dest: _help(a.help) for a in action._choices_actions}  # noqa: SLF001
            for name, child in action.choices.items():
                commands.append((name, helps.get(name, "")))
                children.append((name, child))
            continue
        if not action.option_strings:
            if positional is None and action.nargs == argparse.REMAINDER:
                positional = "rest"  # another program's command line: files
            elif positional is None:
                positional_choices = tuple(str(c) for c in action.choices or ())
                positional = "choices" if positional_choices else _KINDS.get(str(action.metavar))
            continue
        takes_value = action.nargs != 0
        choices = tuple(str(c) for c in action.choices or ())
        kind = "choices" if choices else _KINDS.get(str(action.metavar))
        options.append(
            _Option(tuple(action.option_strings), takes_value, kind, choices, _help(action.help))
        )
    yield _Level(path, tuple(options), tuple(commands), positional, positional_choices)
    for name, child in children:
        yield from _levels(child, f"{path} {name}".strip())


def _flags(level: _Level) -> list[str]:
    return [flag for option in level.options for flag in option.flags]


def _quote(text: str) -> str:
    """A single-quoted shell word."""
    return "'" + text.replace("'", "'\\''") + "'"


def _value_cases(levels: list[_Level], shell: str) -> list[str]:
    """``case "$cmdpath:$prev"`` branches completing an option's value."""
    lines = []
    for level in levels:
        for option in level.options:
            if not option.takes_value:
                continue
            pattern = "|".join(f'"{level.path}:{flag}"' for flag in option.flags)
            if option.kind == "choices":
                words = " ".join(option.choices)
                body = (
                    f'mapfile -t COMPREPLY < <(compgen -W {_quote(words)} -- "$cur")'
                    if shell == "bash"
                    else f"compadd -- {words}"
                )
            elif option.kind == "dir":
                body = _BASH_DIRS if shell == "bash" else "_files -/"
            elif option.kind == "file":
                body = _BASH_FILES if shell == "bash" else "_files"
            else:
                body = "COMPREPLY=()" if shell == "bash" else ":"
            open_, close = ("", ")") if shell == "bash" else ("(", ")")
            lines.append(f"        {open_}{pattern}{close} {body}; return ;;")
    return lines


def _skip_cases(levels: list[_Level]) -> str:
    """The ``cmdpath:word`` patterns of options whose next word is their value."""
    return "|".join(
        f'"{level.path}:{flag}"'
        for level in levels
        for option in level.options
        if option.takes_value
        for flag in option.flags
    )


def _command_cases(levels: list[_Level], shell: str) -> list[str]:
    open_ = "" if shell == "bash" else "("
    return [
        f'            {open_}"{level.path}:{name}") cmdpath="{f"{level.path} {name}".strip()}" ;;'
        for level in levels
        for name, _ in level.commands
    ]


def bash(parser: argparse.ArgumentParser, prog: str) -> str:
    """The bash completion script for ``prog``."""
    levels = list(_levels(parser))
    options = [
        f'        "{level.path}") words={_quote(" ".join(_flags(level)))} ;;' for level in levels
    ]
    commands = [
        f'        "{level.path}") words={_quote(" ".join(n for n, _ in level.commands))} ;;'
        for level in levels
        if level.commands
    ]
    accounts = "|".join(f'"{level.path}"' for level in levels if level.positional == "account")
    return "\n".join(
        [
            f"# bash completion for {prog}, generated from its parser by `{prog} completion bash`.",
            f'# Load it in ~/.bashrc: eval "$({prog} completion bash)"',
            "_codex_supervisor_word() {  # a word as typed, its quotes taken off",
            _BASH_UNQUOTE,
            "}",
            "_codex_supervisor() {",
            '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" cmdpath="" w i words=""',
            "    local -a pool=()",
            "    COMPREPLY=()",
            "    for ((i = 1; i < COMP_CWORD; i++)); do",
            '        w="${COMP_WORDS[i]}"',
            "        if [[ $cmdpath == run && ( $w == -- || $w != -* ) ]]; then",
            f"            {_BASH_FILES}",
            "            return  # Codex's own arguments",
            "        fi",
            '        case "$cmdpath:$w" in',
            f"            {_skip_cases(levels)})",
            "                [[ ${COMP_WORDS[i+1]} == = ]] && ((i++))  # --pool=DIR, split at =",
            (
                "                [[ $w == --pool ]] && "
                'pool=(--pool "$(_codex_supervisor_word "${COMP_WORDS[i+1]}")")'
            ),
            "                ((i++)); continue ;;",
            "        esac",
            '        case "$cmdpath:$w" in',
            *_command_cases(levels, "bash"),
            "        esac",
            "    done",
            '    ((COMP_CWORD > 1)) && prev="${COMP_WORDS[COMP_CWORD-1]}"',
            '    case "$cmdpath:$prev" in',
            *_value_cases(levels, "bash"),
            "    esac",
            "    if [[ $cur == -* ]]; then",
            '        case "$cmdpath" in',
            *options,
            "        esac",
            '        mapfile -t COMPREPLY < <(compgen -W "$words" -- "$cur"); return',
            "    fi",
            '    case "$cmdpath" in',
            *commands,
            *(
                [
                    (
                        f'        {accounts}) words=$({prog} "${{pool[@]}}" accounts list --names '
                        "2>/dev/null) ;;"
                    )
                ]
                if accounts
                else []
            ),
            *(
                f'        "{level.path}") words={_quote(" ".join(level.positional_choices))} ;;'
                for level in levels
                if level.positional == "choices"
            ),
            *(
                f'        "{level.path}") compopt -o filenames; '
                'mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return ;;'
                for level in levels
                if level.positional == "rest"
            ),
            "    esac",
            '    mapfile -t COMPREPLY < <(compgen -W "$words" -- "$cur")',
            "}",
            f"complete -F _codex_supervisor {prog}",
            "",
        ]
    )


def _described(pairs: list[tuple[str, str]]) -> str:
    """A zsh array of ``name:description`` words for ``_describe``."""
    colon = "\\:"  # a colon in a name is escaped; the first plain one ends it
    return " ".join(_quote(f"{name.replace(':', colon)}:{text}") for name, text in pairs)


def zsh(parser: argparse.ArgumentParser, prog: str) -> str:
    """The zsh completion script for ``prog`` (a ``#compdef`` function)."""
    levels = list(_levels(parser))
    options = [
        f'        ("{level.path}") items=({_described([(f, o.help) for o in level.options for f in o.flags])}) ;;'  # noqa: E501
        for level in levels
    ]
    commands = [
        f'        ("{level.path}") items=({_described(list(level.commands))}) ;;'
        for level in levels
        if level.commands
    ]
    accounts = "|".join(f'"{level.path}"' for level in levels if level.positional == "account")
    return "\n".join(
        [
            f"#compdef {prog}",
            f"# zsh completion for {prog}, generated from its parser by `{prog} completion zsh`.",
            f'# Load it in ~/.zshrc after compinit: eval "$({prog} completion zsh)"',
            "_codex_supervisor() {",
            '    local cmdpath="" w i prev=""',
            "    local -a pool items",
            "    for ((i = 2; i < CURRENT; i++)); do",
            "        w=${words[i]}",
            "        if [[ $cmdpath == run && ( $w == -- || $w != -* ) ]]; then",
            "            _files; return  # Codex's own arguments",
            "        fi",
            '        case "$cmdpath:$w" in',
            f"            ({_skip_cases(levels)})",
            '                [[ $w == --pool ]] && pool=(--pool "${(Q)words[i+1]}")',
            "                ((i++)); continue ;;",
            '            (":--pool="*) pool=(--pool "${(Q)w#--pool=}"); continue ;;',
            "        esac",
            '        case "$cmdpath:$w" in',
            *_command_cases(levels, "zsh"),
            "        esac",
            "    done",
            "    prev=${words[CURRENT-1]}",
            '    case "$cmdpath:$prev" in',
            *_value_cases(levels, "zsh"),
            "    esac",
            "    if [[ ${words[CURRENT]} == -* ]]; then",
            '        case "$cmdpath" in',
            *options,
            "        esac",
            "        _describe -t options option items; return",
            "    fi",
            '    case "$cmdpath" in',
            *commands,
            *(
                [
                    (
                        f"        ({accounts}) compadd -- "
                        f'${{(f)"$({prog} "${{pool[@]}}" accounts list --names 2>/dev/null)"}}; '
                        "return ;;"
                    )
                ]
                if accounts
                else []
            ),
            *(
                f'        ("{level.path}") compadd -- {" ".join(level.positional_choices)}; return ;;'  # noqa: E501
                for level in levels
                if level.positional == "choices"
            ),
            *(
                f'        ("{level.path}") _files; return ;;'
                for level in levels
                if level.positional == "rest"
            ),
            "        (*) return 1 ;;",
            "    esac",
            "    _describe -t commands command items",
            "}",
            "if [[ $zsh_eval_context[-1] == loadautofunc ]]; then",
            '    _codex_supervisor "$@"',
            "else",
            f"    compdef _codex_supervisor {prog}",
            "fi",
            "",
        ]
    )

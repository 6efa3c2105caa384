"""`python -m udcbench_plugin_example [NAME]`: print the path of the shipped weights of NAME (default resconv),
e.g. to check an install or to pass it as `--weights FILE` where the model name differs."""

import sys

from udcbench_plugin_example import weights_path


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: python -m udcbench_plugin_example [NAME]", file=sys.stderr)
        return 2
    try:
        print(weights_path(*argv))
    except Exception as error:  # udcbench's MissingWeightsError: one line, as udcbench prints its errors
        from udcbench.errors import UdcbenchError

        if not isinstance(error, UdcbenchError):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

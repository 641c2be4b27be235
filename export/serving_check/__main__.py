"""`python -m export.serving_check --export_dir=EXPORT/1 [--bad_inputs]`; see the package docstring."""

from absl import flags

from export.serving_check import runner
from jem_tf import cli

flags.DEFINE_string("export_dir", None, "An export version directory (OUTPUT/<version>).")
flags.DEFINE_bool("bad_inputs", True, "Also check that malformed requests are refused with INVALID_ARGUMENT.")
flags.mark_flag_as_required("export_dir")

if __name__ == "__main__":
    cli.run(runner.main)  # bad flags exit 2, like every command

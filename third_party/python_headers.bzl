"""The C headers of the Python that runs the workflows, for the client core's binding.

A repository rule (local, nothing downloaded): it asks the interpreter named by
DRAGON_PYTHON (the Makefile sets it to $(PYTHON)), else `python3` on PATH, where
its headers are, and links them in. The Makefile installs the module under that
interpreter's extension suffix (EXT_SUFFIX).
"""

_QUERY = """
import sys, sysconfig
print(sysconfig.get_paths()["include"])
print(sys.executable)
"""

def _python_headers_impl(ctx):
    python = ctx.os.environ.get("DRAGON_PYTHON", "") or ctx.which("python3")
    if not python:
        fail("python_headers: no python3 on PATH and DRAGON_PYTHON is not set")
    result = ctx.execute([python, "-c", _QUERY])
    if result.return_code != 0:
        fail("python_headers: %s could not tell where its headers are: %s" % (python, result.stderr))
    include, executable = result.stdout.strip().split("\n")
    if not ctx.path(include + "/Python.h").exists:
        fail("python_headers: %s has no Python.h in %s (install its development headers)" %
             (executable, include))
    ctx.symlink(include, "include")
    ctx.file("BUILD.bazel", """package(default_visibility = ["//visibility:public"])

cc_library(
    name = "headers",
    hdrs = glob(["include/**/*.h"]),
    includes = ["include"],
)
""")

python_headers = repository_rule(
    implementation = _python_headers_impl,
    environ = ["DRAGON_PYTHON", "PATH"],
    local = True,
)

"""The offline end-to-end run: the real state machine and the real Rust functions, no AWS.

What runs where (see README, "How the local run maps to AWS"):
- moto's AWS emulator runs in this process, with its Step Functions interpreter executing the
  state machine from statemachine/containment.asl.json (the same file the template deploys);
- a ThreadedMotoServer in this process serves the same emulated state over HTTP, and the Rust
  functions (the same binaries as on Lambda, speaking the Lambda Runtime API) call it through
  AWS_ENDPOINT_URL;
- the interpreter's Lambda Tasks reach the functions through lambda_service.py, which answers as
  Lambda does, function errors included, so Retry and Catch match the functions' errorType.

The modules: `template` (what is read from template.yaml and the state machine files), `world`
(the simulated instances and the emulator's state), `stack` (the emulator with the stack's
resources and the functions served), `report` (what a run found, and its text), `run` (the
scenarios and the command line: `python -m local.run`, with helper_scripts/ on PYTHONPATH, as
deploy.sh runs it).
"""


class HarnessError(Exception):
    """The local run itself could not be set up (not a containment failure)."""

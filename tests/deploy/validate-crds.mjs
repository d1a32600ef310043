// Validates custom resources (KEDA, prometheus-operator) against the schemas of their
// CRDs, as packaged by kubernetes-models (versions pinned in package-lock.json). Reads a
// JSON array of resources on stdin (scripts/check-deploy passes `kubectl kustomize`'s
// output); prints one line per invalid resource; exits 1 if any.
// usage: node validate-crds.mjs < resources.json
// Only types, required fields and enums are checked: the CRD schemas, like the API
// server, do not reject unknown fields (scripts/check-deploy does, for the fields it knows).
import * as keda from '@kubernetes-models/keda/keda.sh/v1alpha1';
import * as monitoringV1 from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';

const MODELS = { 'keda.sh/v1alpha1': keda, 'monitoring.coreos.com/v1': monitoringV1 };

let input = '';
for await (const chunk of process.stdin) input += chunk;
let failed = false;
for (const doc of JSON.parse(input)) {
  const group = MODELS[doc.apiVersion];
  if (!group) continue;
  const name = `${doc.kind}/${doc.metadata?.name}`;
  const Model = group[doc.kind];
  if (!Model) {
    console.log(`${name}: ${doc.apiVersion} has no kind ${doc.kind}`);
    failed = true;
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (error) {
    const details = (error.errors || []).map((e) => `${e.instancePath || '/'} ${e.message}`).join('; ');
    console.log(`${name}: invalid ${doc.apiVersion}: ${details || error.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);

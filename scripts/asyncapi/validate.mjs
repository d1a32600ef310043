// Validates AsyncAPI documents with the AsyncAPI project's own parser (and its protobuf
// schema parser, for the .proto payloads). Prints every diagnostic; exits 1 if any is an
// error, a warning or worse. usage: node validate.mjs FILE...
import { Parser, fromFile } from '@asyncapi/parser';
import { ProtoBuffSchemaParser } from '@asyncapi/protobuf-schema-parser';

const SEVERITY = ['error', 'warning', 'information', 'hint'];
const parser = new Parser();
parser.registerSchemaParser(ProtoBuffSchemaParser());
let failed = false;
for (const file of process.argv.slice(2)) {
  const { document, diagnostics } = await fromFile(parser, file).parse();
  for (const d of diagnostics) {
    const at = d.path.join('/');
    console.log(`${file}: ${SEVERITY[d.severity]}: ${d.code}: ${d.message}${at ? ` (at ${at})` : ''}`);
    if (d.severity <= 1) failed = true;
  }
  if (!document) failed = true;
  else console.log(`${file}: parsed: ${document.channels().length} channels, ${document.operations().length} operations, ${document.messages().length} messages`);
}
process.exit(failed ? 1 : 0);

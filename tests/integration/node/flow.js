// Drives dicomfs-emulator with Google's official Node.js clients, unchanged
// but for endpoints: @google-cloud/storage (apiEndpoint, STORAGE_EMULATOR_HOST)
// and @googleapis/healthcare (rootUrl), authenticated through the metadata
// server path (GCE_METADATA_HOST), as google-auth-library does on Compute Engine.
//
// usage: node flow.js CONFIG_JSON
//   CONFIG_JSON: {"url", "project", "location", "dataset", "bucket", "files": [paths],
//                 "filterStudy": "UID"}
// Prints one JSON object with what it saw; exits non-zero on any error.
'use strict';
const fs = require('fs');
const path = require('path');
const {Storage} = require('@google-cloud/storage');
const {healthcare} = require('@googleapis/healthcare');
const {GoogleAuth} = require('google-auth-library');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const dataset = `projects/${cfg.project}/locations/${cfg.location}/datasets/${cfg.dataset}`;
const storeId = 'node-store';
const store = `${dataset}/dicomStores/${storeId}`;

const auth = new GoogleAuth({scopes: ['https://www.googleapis.com/auth/cloud-platform']});
const hcV1 = healthcare({version: 'v1', rootUrl: cfg.url + '/', auth});
const hcBeta = healthcare({version: 'v1beta1', rootUrl: cfg.url + '/', auth});
const storage = new Storage({
  apiEndpoint: cfg.url,
  projectId: cfg.project,
  authClient: auth,
  useAuthWithCustomEndpoint: true,
});

async function waitOp(client, name) {
  for (let i = 0; i < 300; i++) {
    const {data} = await client.projects.locations.datasets.operations.get({name});
    if (data.done) return data;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`operation ${name} did not finish`);
}

async function listNames(prefix) {
  const [files] = await storage.bucket(cfg.bucket).getFiles({prefix});
  return files.map((f) => f.name).sort();
}

async function main() {
  const out = {};
  const bucket = storage.bucket(cfg.bucket);
  for (const f of cfg.files) {
    await bucket.upload(f, {destination: `node/in/${path.basename(f)}`, resumable: false});
  }
  // One large-ish resumable upload, as the client does for big files.
  await bucket.upload(cfg.files[0], {destination: 'node/resumable/first.dcm', resumable: true});
  out.uploaded = await listNames('node/in/');

  await hcV1.projects.locations.datasets.dicomStores.create({
    parent: dataset, dicomStoreId: storeId, requestBody: {}});
  const storeGot = await hcV1.projects.locations.datasets.dicomStores.get({name: store});
  out.storeName = storeGot.data.name;

  const imp = await hcV1.projects.locations.datasets.dicomStores.import({
    name: store, requestBody: {gcsSource: {uri: `gs://${cfg.bucket}/node/in/**`}}});
  out.importOp = await waitOp(hcV1, imp.data.name);

  const exAll = await hcV1.projects.locations.datasets.dicomStores.export({
    name: store,
    requestBody: {gcsDestination: {uriPrefix: `gs://${cfg.bucket}/node/export-all`}}});
  out.exportAllOp = await waitOp(hcV1, exAll.data.name);
  out.exportAll = await listNames('node/export-all/');

  await bucket.file('node/filter.txt').save(`/studies/${cfg.filterStudy}\n`, {resumable: false});
  const exOne = await hcBeta.projects.locations.datasets.dicomStores.export({
    name: store,
    requestBody: {
      gcsDestination: {uriPrefix: `gs://${cfg.bucket}/node/export-one`,
                       mimeType: 'application/dicom; transfer-syntax=*'},
      filterConfig: {resourcePathsGcsUri: `gs://${cfg.bucket}/node/filter.txt`},
    }});
  out.exportOneOp = await waitOp(hcBeta, exOne.data.name);
  out.exportOne = await listNames('node/export-one/');

  const ops = await hcV1.projects.locations.datasets.operations.list({name: dataset});
  out.operations = (ops.data.operations || []).map((o) => o.name);

  const [contents] = await bucket.file(out.exportOne[0]).download();
  out.firstExportedSize = contents.length;
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  console.error('node flow failed:', e && e.stack ? e.stack : e);
  process.exit(1);
});

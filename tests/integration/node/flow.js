// Drives dicomfs-emulator with Google's official Node.js clients, unchanged
// but for endpoints: @google-cloud/storage (apiEndpoint, STORAGE_EMULATOR_HOST)
// and @googleapis/healthcare (rootUrl), authenticated through the metadata
// server path (GCE_METADATA_HOST), as google-auth-library does on Compute Engine.
//
// usage: node flow.js CONFIG_JSON
//   CONFIG_JSON: {"url", "project", "location", "dataset", "bucket",
//                 "files": [DICOM paths], "bigFile": path (optional, >= 512 KiB),
//                 "filterStudy": "UID"}
// Prints one JSON object with what each step saw. A step that throws stops the
// flow: the object then carries "error" {step, message, status, method, url,
// response} so the test can say exactly which request the emulator got wrong,
// and the process exits 1.
'use strict';
const fs = require('fs');
const path = require('path');
const {Storage} = require('@google-cloud/storage');
const {healthcare, auth: hcAuthPlus} = require('@googleapis/healthcare');
const {GoogleAuth} = require('google-auth-library');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const dataset = `projects/${cfg.project}/locations/${cfg.location}/datasets/${cfg.dataset}`;
const storeId = 'node-store';
const store = `${dataset}/dicomStores/${storeId}`;

const scopes = ['https://www.googleapis.com/auth/cloud-platform'];
// Each client gets a GoogleAuth of the google-auth-library major it is built
// on: @googleapis/healthcare 26 (googleapis-common 8) passes gaxios 7 Headers
// objects, to which a google-auth-library 9 client cannot add Authorization
// (the request then goes out without it and a faithful server answers 401).
const auth = new GoogleAuth({scopes});
const hcAuth = new hcAuthPlus.GoogleAuth({scopes});
const hcV1 = healthcare({version: 'v1', rootUrl: cfg.url + '/', auth: hcAuth});
const hcBeta = healthcare({version: 'v1beta1', rootUrl: cfg.url + '/', auth: hcAuth});
const storage = new Storage({
  apiEndpoint: cfg.url,
  projectId: cfg.project,
  authClient: auth,
  useAuthWithCustomEndpoint: true,
});
const bucket = storage.bucket(cfg.bucket);

const out = {steps: []};

async function step(name, fn) {
  try {
    const v = await fn();
    out.steps.push(name);
    return v;
  } catch (e) {
    const resp = e && e.response;
    const conf = (e && e.config) || (resp && resp.config) || {};
    let body = resp ? (resp.data !== undefined ? resp.data : resp.body) : undefined;
    if (body !== undefined && typeof body !== 'string') body = JSON.stringify(body);
    out.error = {
      step: name,
      message: String(e && e.message),
      status: (resp && (resp.status || resp.statusCode)) || (e && e.code),
      method: conf.method || (resp && resp.request && resp.request.method),
      url: conf.url || (resp && resp.request && (resp.request.href || resp.request.url)),
      response: body && body.slice(0, 2000),
    };
    throw e;
  }
}

async function waitOp(client, name) {
  for (let i = 0; i < 600; i++) {
    const {data} = await client.projects.locations.datasets.operations.get({name});
    if (data.done) return data;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`operation ${name} did not finish in 120 s`);
}

// Objects under a prefix with the metadata a user would check.
async function listObjects(prefix) {
  const [files] = await bucket.getFiles({prefix});
  return files
      .map((f) => ({name: f.name, size: f.metadata.size, md5Hash: f.metadata.md5Hash}))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

async function main() {
  out.token = await step('metadata-token', async () => Boolean(await auth.getAccessToken()));

  await step('upload-multipart', async () => {
    for (const f of cfg.files) {
      await bucket.upload(f, {destination: `node/in/${path.basename(f)}`, resumable: false});
    }
  });
  out.uploaded = await step('list-uploaded', () => listObjects('node/in/'));

  if (cfg.bigFile) {
    // bucket.upload({resumable: true}) does not pass useAuthWithCustomEndpoint
    // on to the session-creating POST (File.startResumableUpload_ in
    // @google-cloud/storage 7.17.3), so against any custom endpoint it goes out
    // without Authorization and a faithful server answers 401. The documented
    // two-step form does pass it: create the session (authenticated), then
    // upload to the session URI, which is itself the credential.
    const dest = bucket.file('node/resumable/big.bin');
    const [uri] = await step('resumable-create', () => dest.createResumableUpload());
    out.resumableUri = uri;
    await step('resumable-upload', () => bucket.upload(cfg.bigFile, {
      destination: 'node/resumable/big.bin', resumable: true, uri, chunkSize: 256 * 1024}));
    const [meta] = await step('resumable-metadata', () => dest.getMetadata());
    out.resumable = {name: meta.name, size: meta.size, md5Hash: meta.md5Hash};
    const [contents] = await step('resumable-download', () => dest.download());
    out.resumableDownloadedSize = contents.length;
  }

  await step('store-create', () => hcV1.projects.locations.datasets.dicomStores.create({
    parent: dataset, dicomStoreId: storeId, requestBody: {}}));
  const storeGot = await step('store-get', () =>
    hcV1.projects.locations.datasets.dicomStores.get({name: store}));
  out.storeName = storeGot.data.name;

  const imp = await step('import', () => hcV1.projects.locations.datasets.dicomStores.import({
    name: store, requestBody: {gcsSource: {uri: `gs://${cfg.bucket}/node/in/**`}}}));
  out.importOp = await step('import-wait', () => waitOp(hcV1, imp.data.name));

  const exAll = await step('export-all', () => hcV1.projects.locations.datasets.dicomStores.export({
    name: store,
    requestBody: {gcsDestination: {uriPrefix: `gs://${cfg.bucket}/node/export-all`}}}));
  out.exportAllOp = await step('export-all-wait', () => waitOp(hcV1, exAll.data.name));
  out.exportAll = await step('list-export-all', () => listObjects('node/export-all/'));

  await step('filter-save', () =>
    bucket.file('node/filter.txt').save(`/studies/${cfg.filterStudy}\n`, {resumable: false}));
  const exOne = await step('export-filtered', () =>
    hcBeta.projects.locations.datasets.dicomStores.export({
      name: store,
      requestBody: {
        gcsDestination: {uriPrefix: `gs://${cfg.bucket}/node/export-one`,
                         mimeType: 'application/dicom; transfer-syntax=*'},
        filterConfig: {resourcePathsGcsUri: `gs://${cfg.bucket}/node/filter.txt`},
      }}));
  out.exportOneOp = await step('export-filtered-wait', () => waitOp(hcBeta, exOne.data.name));
  out.exportOne = await step('list-export-one', () => listObjects('node/export-one/'));

  const ops = await step('operations-list', () =>
    hcV1.projects.locations.datasets.operations.list({name: dataset}));
  out.operations = (ops.data.operations || []).map((o) => o.name);
  out.opNames = [imp.data.name, exAll.data.name, exOne.data.name];

  if (out.exportOne.length > 0) {
    const [contents] = await step('download-exported', () =>
      bucket.file(out.exportOne[0].name).download());
    out.firstExportedSize = contents.length;
  }
}

main().then(() => {
  process.stdout.write(JSON.stringify(out) + '\n');
}, (e) => {
  console.error('node flow failed:', e && e.stack ? e.stack : e);
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(1);
});

/**
 * A local HTTP endpoint that answers the two S3 bucket ACL calls (GetBucketAcl, PutBucketAcl) for
 * buckets it holds, and records CloudFormation custom resource responses (PUT /cfn-response).
 * The local S3 server used elsewhere (s3rver) does not implement bucket ACLs; this is the test
 * stand-in for exactly those two calls, spoken over real HTTP to the real S3 client.
 */
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { XMLParser } from 'fast-xml-parser';

export interface AclGrant {
  id: string;
  permission: string;
}

export interface LocalAclServer {
  readonly endpoint: string;
  readonly responseUrl: string;
  readonly acls: Map<string, { owner: string; grants: AclGrant[] }>;
  readonly responses: any[];
  close(): Promise<void>;
}

const parser = new XMLParser({ ignoreAttributes: false, removeNSPrefix: true, isArray: (name) => name === 'Grant' });

function aclXml(owner: string, grants: AclGrant[]): string {
  const g = grants
    .map(
      (x) =>
        `<Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="CanonicalUser"><ID>${x.id}</ID></Grantee><Permission>${x.permission}</Permission></Grant>`,
    )
    .join('');
  return `<?xml version="1.0" encoding="UTF-8"?><AccessControlPolicy xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Owner><ID>${owner}</ID><DisplayName>owner</DisplayName></Owner><AccessControlList>${g}</AccessControlList></AccessControlPolicy>`;
}

export async function startLocalAclServer(): Promise<LocalAclServer> {
  const acls = new Map<string, { owner: string; grants: AclGrant[] }>();
  const responses: any[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const url = new URL(req.url ?? '/', 'http://localhost');
      if (url.pathname === '/cfn-response' && req.method === 'PUT') {
        responses.push(JSON.parse(body));
        res.writeHead(200).end();
        return;
      }
      const bucket = url.pathname.split('/')[1];
      const acl = acls.get(bucket);
      if (!url.searchParams.has('acl')) {
        res.writeHead(501).end();
        return;
      }
      if (!acl) {
        res.writeHead(404, { 'content-type': 'application/xml' });
        res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><BucketName>${bucket}</BucketName></Error>`);
        return;
      }
      if (req.method === 'GET') {
        res.writeHead(200, { 'content-type': 'application/xml' });
        res.end(aclXml(acl.owner, acl.grants));
        return;
      }
      if (req.method === 'PUT') {
        const doc = parser.parse(body).AccessControlPolicy;
        acl.owner = String(doc.Owner.ID);
        acl.grants = (doc.AccessControlList?.Grant ?? []).map((g: any) => ({ id: String(g.Grantee.ID), permission: String(g.Permission) }));
        res.writeHead(200).end();
        return;
      }
      res.writeHead(405).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const endpoint = `http://127.0.0.1:${port}`;
  return {
    endpoint,
    responseUrl: `${endpoint}/cfn-response`,
    acls,
    responses,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

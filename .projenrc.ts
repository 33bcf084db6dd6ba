import { awscdk, javascript } from 'projen';

const project = new awscdk.AwsCdkConstructLibrary({
  name: 'cdk-vm-import-export',
  description:
    'AWS CDK constructs for VM Import/Export: the service role, import and export buckets, and workflows that inspect, convert and import VM disk images.',
  author: 'cdk-vm-import-export maintainers',
  authorAddress: 'maintainers@cdk-vm-import-export.dev',
  repositoryUrl: 'https://github.com/cdk-vm-import-export/cdk-vm-import-export.git',
  keywords: ['cdk', 'awscdk', 'vm-import', 'vm-export', 'vmimport', 'ami', 'migration', 'vmdk', 'vhd', 'qcow2', 'ova'],
  license: 'Apache-2.0',
  stability: 'experimental',

  defaultReleaseBranch: 'main',
  packageManager: javascript.NodePackageManager.NPM,
  projenrcTs: true,
  minNodeVersion: '20.0.0',

  // aws-cdk-lib and constructs are peer dependencies (projen pins the dev copy to cdkVersion).
  cdkVersion: '2.276.0',
  constructsVersion: '10.5.1',
  jsiiVersion: '~6.0.0',

  // The project's own repository hosts CI; no generated GitHub workflows, no release automation.
  github: false,
  release: false,

  // jsii targets: package names chosen once, for every language.
  publishToPypi: {
    distName: 'cdk-vm-import-export',
    module: 'cdk_vm_import_export',
  },
  publishToMaven: {
    javaPackage: 'io.github.cdkvmimportexport',
    mavenGroupId: 'io.github.cdk-vm-import-export',
    mavenArtifactId: 'cdk-vm-import-export',
  },
  publishToNuget: {
    dotNetNamespace: 'CdkVmImportExport',
    packageId: 'CdkVmImportExport',
  },
  publishToGo: {
    moduleName: 'github.com/cdk-vm-import-export/cdk-vm-import-export-go',
    packageName: 'cdkvmimportexport',
  },

  // Everything that runs after deploy lives in lambda/ and is bundled into assets/ by esbuild at
  // build time, so nothing here is a runtime dependency of the construct library.
  devDeps: [
    'esbuild',
    '@aws-sdk/client-s3',
    '@aws-sdk/client-ec2',
    '@types/aws-lambda',
    'cdk-nag',
    '@cloud-copilot/iam-simulate',
    'fast-check',
    'fast-xml-parser',
    'fzstd',
    'xz-decompress',
    'unbzip2-stream',
    's3rver',
    '@types/s3rver',
    'aws-local-stepfunctions',
    'asl-validator',
    '@aws-sdk/client-sfn',
    '@aws-sdk/client-imagebuilder',
    '@aws-sdk/client-eventbridge',
  ],
  bin: { vmie: 'assets/vmie/index.js' },

  jestOptions: {
    jestConfig: {
      testTimeout: 120_000,
      collectCoverage: false,
    },
  },
  tsconfigDev: {
    include: ['../lambda/**/*.ts', '../bench/**/*.ts'],
    compilerOptions: {},
  },
  gitignore: ['/assets/', '/cdk.out/', '/test/fixtures/.cache/', '/bench/.work/'],
  npmIgnoreOptions: { ignorePatterns: ['/lambda/', '/bench/', '/.ci/', '/cdk.out/'] },
});

// lambda/ is type-checked with its own tsconfig (it never goes through jsii).
const lambdaTypecheck = project.addTask('lambda:typecheck', {
  description: 'Type-check the runtime code in lambda/',
  exec: 'tsc -p lambda/tsconfig.json',
});

// Bundle each Lambda handler and the vmie command into assets/<name>/index.js.
const bundle = project.addTask('bundle', {
  description: 'Bundle the Lambda handlers and the vmie command with esbuild into assets/',
});
bundle.exec('rm -rf assets');
bundle.exec(
  'esbuild lambda/handlers/*.ts --bundle --platform=node --target=node24 --format=cjs --minify --main-fields=module,main --supported:dynamic-import=false --legal-comments=none --outdir=assets --entry-names=[name]/index --log-level=warning',
);
bundle.exec(
  'esbuild lambda/cli/vmie.ts --bundle --platform=node --target=node20 --format=cjs --minify --main-fields=module,main --supported:dynamic-import=false --legal-comments=none --outfile=assets/vmie/index.js --banner:js="#!/usr/bin/env node" --log-level=warning',
);
bundle.exec('chmod +x assets/vmie/index.js');

project.preCompileTask.spawn(lambdaTypecheck);
project.preCompileTask.spawn(bundle);
// The construct tests synthesize stacks that point at the bundles: build them before jest runs.
project.testTask.prependSpawn(bundle);

project.eslint?.addLintPattern('lambda');
project.eslint?.addLintPattern('bench');
// Binary formats are read and written with bit operations; lambda/ and bench/ are bundled or run
// from the dev dependencies, never installed as runtime dependencies of the library.
project.eslint?.addOverride({
  files: ['lambda/**/*.ts', 'test/**/*.ts', 'bench/**/*.ts'],
  rules: {
    'no-bitwise': 'off',
    'import/no-extraneous-dependencies': ['error', { devDependencies: true, optionalDependencies: false, peerDependencies: true }],
  },
});

project.addTask('demo', {
  description: 'Synthesize the example app, then import a sample image end to end against the local AWS, offline, and print the AMI',
  steps: [{ spawn: 'bundle' }, { exec: 'ts-node --transpile-only --project test/tsconfig.json test/demo/main.ts' }],
});

project.addTask('bench', {
  description: 'Run the benchmarks in bench/ and write their results beside them',
  steps: [{ spawn: 'bundle' }, { exec: 'ts-node --transpile-only --project test/tsconfig.json bench/run.ts', receiveArgs: true }],
});

project.synth();

export * from './service-role';
export * from './import-bucket';
export * from './export-bucket';
export * from './import-options';
export * from './import-workflow';
export * from './export-workflow';
export * from './vm-import-export';

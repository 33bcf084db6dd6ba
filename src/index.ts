export * from './service-role';
export * from './import-bucket';
export * from './export-bucket';

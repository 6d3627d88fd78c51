/**
 * Minimal Reflect metadata polyfill. @peculiar/x509 2.x depends on tsyringe, which refuses to load
 * unless `Reflect.getMetadata` exists; reflect-metadata is not a dependency, and tsyringe only needs
 * define/get(Own) metadata, so a WeakMap store is enough. A real polyfill, if loaded first, wins.
 */

type MetadataKey = unknown;
type PropertyKeyOrNone = string | symbol | undefined;

const store = new WeakMap<object, Map<PropertyKeyOrNone, Map<MetadataKey, unknown>>>();

function ownMap(target: object, property: PropertyKeyOrNone, create: boolean): Map<MetadataKey, unknown> | undefined {
  let byProperty = store.get(target);
  if (!byProperty) {
    if (!create) return undefined;
    byProperty = new Map();
    store.set(target, byProperty);
  }
  let map = byProperty.get(property);
  if (!map && create) {
    map = new Map();
    byProperty.set(property, map);
  }
  return map;
}

function getOwnMetadata(key: MetadataKey, target: object, property?: PropertyKeyOrNone): unknown {
  return ownMap(target, property, false)?.get(key);
}

function hasOwnMetadata(key: MetadataKey, target: object, property?: PropertyKeyOrNone): boolean {
  return ownMap(target, property, false)?.has(key) ?? false;
}

function hasMetadata(key: MetadataKey, target: object, property?: PropertyKeyOrNone): boolean {
  for (let t: object | null = target; t !== null; t = Object.getPrototypeOf(t) as object | null) {
    if (hasOwnMetadata(key, t, property)) return true;
  }
  return false;
}

function getMetadata(key: MetadataKey, target: object, property?: PropertyKeyOrNone): unknown {
  for (let t: object | null = target; t !== null; t = Object.getPrototypeOf(t) as object | null) {
    const map = ownMap(t, property, false);
    if (map?.has(key)) return map.get(key);
  }
  return undefined;
}

function defineMetadata(key: MetadataKey, value: unknown, target: object, property?: PropertyKeyOrNone): void {
  ownMap(target, property, true)?.set(key, value);
}

function metadata(key: MetadataKey, value: unknown) {
  return (target: object, property?: PropertyKeyOrNone): void => defineMetadata(key, value, target, property);
}

const reflect = Reflect as unknown as Record<string, unknown>;
if (typeof reflect['getMetadata'] !== 'function') {
  Object.assign(reflect, { getOwnMetadata, hasOwnMetadata, hasMetadata, getMetadata, defineMetadata, metadata });
}

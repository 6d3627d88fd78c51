/** Contract §4 topic names for one device, as handed to a newly registered device. */
export interface DeviceTopics {
  telemetry: string;
  commands: string;
  commandResponse: string;
  shadow: string;
  status: string;
  errors: string;
}

export function deviceTopics(id: string): DeviceTopics {
  const base = `devices/${id}`;
  return {
    telemetry: `${base}/telemetry`,
    commands: `${base}/commands/+`,
    commandResponse: `${base}/commands/{commandId}/response`,
    shadow: `${base}/shadow`,
    status: `${base}/status`,
    errors: `${base}/errors`,
  };
}

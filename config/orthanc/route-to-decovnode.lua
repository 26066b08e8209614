-- Orthanc routing for decov-node: every CT series, once Orthanc considers it complete
-- ("StableAge" seconds without a new instance), is sent to the node. The node's results
-- (SEG, SR, key images) come back into the same study and are not CT, so they are not routed.
--
-- In Orthanc's configuration:
--   "LuaScripts": [ "/etc/orthanc/route-to-decovnode.lua" ],
--   "DicomModalities": { "decovnode": [ "DECOVNODE", "node-host", 11112 ] },
--   "StableAge": 30
-- and, on the node, a [[destinations]] entry with Orthanc's AE title, host and DICOM port.

function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'CT' then
    print('decov-node: routing CT series ' .. seriesId)
    -- A C-STORE job for the whole series (Lua's SendToModality takes single instances only).
    RestApiPost('/modalities/decovnode/store', seriesId)
  end
end
